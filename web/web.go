// Package web holds the browser side of Herald, embedded in the gateway
// binary: the demo page and the client library. Nothing needs building.
package web

import (
	"embed"
	"io/fs"
)

//go:embed index.html app.js style.css herald.js herald.d.ts
var files embed.FS

// FS returns the embedded files, served by the gateway at /.
func FS() fs.FS { return files }
