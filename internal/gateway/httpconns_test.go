package gateway

import (
	"net"
	"net/http"
	"testing"
)

// fakeConn is a net.Conn that records Close.
type fakeConn struct {
	net.Conn
	name   string
	closed bool
}

func (c *fakeConn) Close() error { c.closed = true; return nil }

func TestHTTPConnsEvictsTheStalest(t *testing.T) {
	type step struct {
		conn string
		st   http.ConnState
	}
	tests := []struct {
		name    string
		steps   []step
		evicted string // "" none
		left    int
	}{
		{"under the cap", []step{{"a", http.StateNew}, {"b", http.StateNew}}, "", 2},
		{"oldest goes", []step{{"a", http.StateNew}, {"b", http.StateNew}, {"c", http.StateNew}}, "a", 2},
		{"activity refreshes", []step{{"a", http.StateNew}, {"b", http.StateNew}, {"a", http.StateActive}, {"c", http.StateNew}}, "b", 2},
		{"idle refreshes", []step{{"a", http.StateNew}, {"b", http.StateNew}, {"a", http.StateIdle}, {"c", http.StateNew}}, "b", 2},
		{"hijacked leaves", []step{{"a", http.StateNew}, {"b", http.StateNew}, {"a", http.StateHijacked}, {"c", http.StateNew}}, "", 2},
		{"closed leaves", []step{{"a", http.StateNew}, {"a", http.StateClosed}, {"b", http.StateNew}, {"c", http.StateNew}}, "", 2},
		{"evicted stays out", []step{{"a", http.StateNew}, {"b", http.StateNew}, {"c", http.StateNew}, {"a", http.StateIdle}, {"a", http.StateClosed}}, "a", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evictions := 0
			h := newHTTPConns(2, func() { evictions++ })
			conns := map[string]*fakeConn{}
			for _, s := range tt.steps {
				c := conns[s.conn]
				if c == nil {
					c = &fakeConn{name: s.conn}
					conns[s.conn] = c
				}
				h.track(c, s.st)
			}
			for name, c := range conns {
				if c.closed != (name == tt.evicted) {
					t.Errorf("%s closed %v, want %v", name, c.closed, name == tt.evicted)
				}
			}
			if want := map[bool]int{true: 1, false: 0}[tt.evicted != ""]; evictions != want {
				t.Errorf("%d evictions, want %d", evictions, want)
			}
			if h.len() != tt.left {
				t.Errorf("%d connections counted, want %d", h.len(), tt.left)
			}
		})
	}
}
