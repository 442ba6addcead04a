package main

import (
	"strings"
	"testing"
)

// TestOriginsAsOperatorsWriteThem: full origins check scheme and port, host
// patterns any scheme; browsers of other origins are refused with 403.
func TestOriginsAsOperatorsWriteThem(t *testing.T) {
	_, rs := cluster(t, 1, map[string]string{"HERALD_ALLOWED_ORIGINS": "https://app.example.com, http://localhost:3000,*.trusted.test"})
	r := rs[0]
	sid := r.newSession(t, "u")
	tests := []struct {
		origin string
		want   int // 101: upgraded
	}{
		{"https://app.example.com", 101},
		{"https://app.example.com:443", 101},
		{"http://localhost:3000", 101},
		{"https://a.b.trusted.test", 101},
		{"http://x.trusted.test", 101},
		{"http://app.example.com", 403},
		{"https://app.example.com:8443", 403},
		{"http://localhost:3001", 403},
		{"https://trusted.test", 403},
		{"https://x.trusted.test:8443", 403},
		{"null", 403},
	}
	for _, tt := range tests {
		hdr := bearerHeader(sid)
		hdr.Set("Origin", tt.origin)
		if tt.want == 101 {
			dial(t, r.wsURL(""), hdr).nextOf("welcome")
			continue
		}
		if st, _ := dialStatus(t, r.wsURL(""), hdr); st != tt.want {
			t.Errorf("Origin %s: %d, want %d", tt.origin, st, tt.want)
		}
	}
}

// TestOriginThatCanNeverMatchStopsStart: an allow-list entry no browser
// could send stops the gateway at start with a message naming the variable
// and the entry.
func TestOriginThatCanNeverMatchStopsStart(t *testing.T) {
	for _, bad := range []string{"https://app.example.com/", "wss://app.example.com", "app.*.example.com", "*"} {
		vars := map[string]string{"HERALD_ADDR": "127.0.0.1:0", "HERALD_ALLOWED_ORIGINS": "app.example.com," + bad}
		err := runBriefly(t, vars)
		if err == nil || !strings.HasPrefix(err.Error(), "HERALD_ALLOWED_ORIGINS:") || !strings.Contains(err.Error(), `"`+bad+`"`) {
			t.Errorf("%s: run returned %v, want an error naming HERALD_ALLOWED_ORIGINS and the entry", bad, err)
		}
	}
}
