package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"net/http"
	"strings"
)

// staticHandler serves the embedded web files. Embedded files carry no
// modification time, so each gets a content ETag and "no-cache" (the
// browser revalidates, and gets 304 while the file is unchanged). The
// client library may be imported by pages on other origins, so it is
// served with Access-Control-Allow-Origin: *.
func staticHandler(files fs.FS) http.Handler {
	etags := map[string]string{}
	fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := fs.ReadFile(files, path)
		if err != nil {
			return nil
		}
		sum := sha256.Sum256(b)
		etags["/"+path] = `"` + hex.EncodeToString(sum[:8]) + `"`
		return nil
	})
	etags["/"] = etags["/index.html"]
	server := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if tag, ok := etags[r.URL.Path]; ok {
			h.Set("ETag", tag)
			h.Set("Cache-Control", "no-cache")
		}
		switch p := r.URL.Path; {
		case strings.HasSuffix(p, ".d.ts"):
			h.Set("Content-Type", "application/typescript; charset=utf-8")
			h.Set("Access-Control-Allow-Origin", "*")
		case strings.HasPrefix(p, "/herald") && strings.HasSuffix(p, ".js"):
			h.Set("Content-Type", "text/javascript; charset=utf-8")
			h.Set("Access-Control-Allow-Origin", "*")
		}
		server.ServeHTTP(w, r)
	})
}
