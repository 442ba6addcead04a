package jobs_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/jobs"
	"github.com/heraldgw/herald/internal/redistest"
)

func TestParseCatalog(t *testing.T) {
	for _, tc := range []struct {
		name, src, err string
	}{
		{"valid", `[{"kind":"blur","label":"Blur","durationMs":400,"params":{"radius":3}},{"kind":"sepia","durationMs":0}]`, ""},
		{"not json", `{nope`, "parse catalog"},
		{"not a list", `{"kind":"blur"}`, "parse catalog"},
		{"empty", `[]`, "no effects"},
		{"empty kind", `[{"label":"x"}]`, "empty kind"},
		{"duplicate kind", `[{"kind":"a"},{"kind":"a"}]`, "defined twice"},
		{"negative duration", `[{"kind":"a","durationMs":-1}]`, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := jobs.ParseCatalog([]byte(tc.src))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			blur, ok := c.Lookup("blur")
			if !ok || blur.Label != "Blur" || blur.Duration() != 400*time.Millisecond || string(blur.Params) != `{"radius":3}` {
				t.Errorf("blur: got %+v, %v", blur, ok)
			}
			if _, ok := c.Lookup("glow"); ok {
				t.Error("glow: found, want unknown")
			}
			if len(c.Hash) != 64 {
				t.Errorf("hash %q: want hex SHA-256", c.Hash)
			}
		})
	}
}

func TestCatalogSource(t *testing.T) {
	const body = `[{"kind":"blur","durationMs":5}]`
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := int(status.Load()); s != http.StatusOK {
			w.WriteHeader(s)
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "catalog.json")
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, make([]byte, jobs.MaxCatalogSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	secretURL := strings.Replace(srv.URL, "http://", "http://user:secret@", 1) + "/c.json?token=secret"
	for _, tc := range []struct {
		name, loc, err string
		status         int
	}{
		{"file", file, "", 200},
		{"url", secretURL, "", 200},
		{"missing file", filepath.Join(dir, "nope.json"), "no such file", 200},
		{"too large", big, "larger than", 200},
		{"http error", secretURL, "404", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status.Store(int32(tc.status))
			src, err := jobs.NewCatalogSource(tc.loc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(src.String(), "secret") {
				t.Errorf("String shows credentials: %s", src)
			}
			c, err := src.Load(ctxT(t))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error mentioning %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error shows credentials: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := c.Lookup("blur"); !ok || e.Duration() != 5*time.Millisecond {
				t.Errorf("blur: got %+v, %v", e, ok)
			}
		})
	}
}

// A change of the catalog file is noticed by the check, which invalidates
// the cached catalog for every worker: both caches (two workers) then see
// the new catalog. An unreadable or invalid file changes nothing.
func TestCatalogCacheNoticesChange(t *testing.T) {
	rdb := redistest.Start(t).Client()
	file := filepath.Join(t.TempDir(), "catalog.json")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`[{"kind":"blur","durationMs":5}]`)
	src, err := jobs.NewCatalogSource(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	open := func() *jobs.CatalogCache {
		cc, err := jobs.NewCatalogCache(rdb, src, jobs.CatalogConfig{Fresh: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	a, b := open(), open()
	lookup := func(cc *jobs.CatalogCache, kind string) bool {
		t.Helper()
		_, ok, err := cc.Lookup(ctxT(t), kind)
		if err != nil {
			t.Fatalf("Lookup %s: %v", kind, err)
		}
		return ok
	}
	if !lookup(a, "blur") || lookup(b, "glow") {
		t.Fatal("initial catalog: want blur, not glow")
	}
	if changed, err := a.CheckSource(ctxT(t)); changed || err != nil {
		t.Errorf("check of an unchanged source: got %v, %v", changed, err)
	}

	write(`[{"kind":"blur","durationMs":5},{"kind":"glow","durationMs":7}]`)
	// Cached for an hour: without the check, nobody sees glow yet.
	if lookup(b, "glow") {
		t.Fatal("glow visible before the check")
	}
	if changed, err := a.CheckSource(ctxT(t)); !changed || err != nil {
		t.Fatalf("check after the change: got %v, %v, want changed", changed, err)
	}
	if !lookup(b, "glow") || !lookup(a, "glow") {
		t.Error("after the invalidation: glow unknown")
	}

	write(`[{"kind":`) // caught half-written
	if changed, err := a.CheckSource(ctxT(t)); changed || err == nil {
		t.Errorf("check of an invalid source: got %v, %v, want an error and no change", changed, err)
	}
	if !lookup(a, "glow") {
		t.Error("an invalid source replaced the cached catalog")
	}
}

// Watch checks the source periodically, until its context is done.
func TestCatalogWatch(t *testing.T) {
	rdb := redistest.Start(t).Client()
	file := filepath.Join(t.TempDir(), "catalog.json")
	if err := os.WriteFile(file, []byte(`[{"kind":"blur"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	src, _ := jobs.NewCatalogSource(file, nil)
	cc, err := jobs.NewCatalogCache(rdb, src, jobs.CatalogConfig{Fresh: time.Hour, Check: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := cc.Catalog(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan struct{})
	go func() { cc.Watch(ctx); close(done) }()
	if err := os.WriteFile(file, []byte(`[{"kind":"glow"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "glow known", func() bool {
		_, ok, err := cc.Lookup(ctxT(t), "glow")
		return err == nil && ok
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}

// A kind just added to the source is found at once, though the cached
// catalog is fresh and lacks it: an unknown kind makes Lookup check the
// source before answering.
func TestLookupFindsAKindJustAdded(t *testing.T) {
	rdb := redistest.Start(t).Client()
	path := filepath.Join(t.TempDir(), "catalog.json")
	if err := os.WriteFile(path, []byte(`[{"kind":"blur"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := jobs.NewCatalogSource(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := jobs.NewCatalogCache(rdb, src, jobs.CatalogConfig{Fresh: time.Hour, Stale: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, ok, err := cc.Lookup(ctxT(t), "blur"); !ok || err != nil {
		t.Fatalf("Lookup(blur) = %v, %v", ok, err)
	}
	if err := os.WriteFile(path, []byte(`[{"kind":"blur"},{"kind":"sharpen"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := cc.Lookup(ctxT(t), "sharpen"); !ok || err != nil {
		t.Fatalf("Lookup(sharpen) after the source gained it = %v, %v; want found", ok, err)
	}
	if _, ok, err := cc.Lookup(ctxT(t), "nonesuch"); ok || err != nil {
		t.Errorf("Lookup(nonesuch) = %v, %v; want not found", ok, err)
	}
}
