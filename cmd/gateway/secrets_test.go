package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestNoSecretsInLogsOrMetrics runs a whole session — connect by ticket,
// cookie and bearer, publish, bad inputs, revoke — at debug log level, then
// scans every log line and the /metrics text for the session id, the
// ticket and the API key.
func TestNoSecretsInLogsOrMetrics(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_SESSION_CHECK": "50ms"})
	r := rs[0]
	sid := r.newSession(t, "u")
	_, tb := r.api(t, "POST", "/api/tickets", sid, nil)
	ticket, _ := tb["ticket"].(string)
	if ticket == "" {
		t.Fatalf("no ticket: %v", tb)
	}

	c1 := dial(t, r.wsURL("?ticket="+ticket), nil)
	c1.nextOf("welcome")
	c2 := dial(t, r.wsURL(""), http.Header{"Cookie": {"sid=" + sid}})
	c2.nextOf("welcome")
	c3 := dial(t, r.wsURL(""), bearerHeader(sid))
	c3.nextOf("welcome")
	r.publish(t, "user:u", "e", map[string]any{"x": 1})
	c3.nextOf("event")

	// Bad inputs of every kind, each carrying a secret somewhere.
	dialStatus(t, r.wsURL("?ticket="+ticket), nil)                                                  // used ticket
	dialStatus(t, r.wsURL(""), bearerHeader(sid+"x"))                                               // unknown session
	dialStatus(t, r.wsURL(""), http.Header{"Authorization": {"Bearer " + sid}, "Origin": {"null"}}) // foreign origin
	r.api(t, "POST", "/api/publish", testAPIKey+"x", map[string]any{"channel": "user:u", "event": "e"})
	r.api(t, "POST", "/api/publish", testAPIKey, `{"channel":"`+sid+`"}`)
	r.api(t, "DELETE", "/api/sessions/"+sid+"x", testAPIKey, nil)
	c3.sendRaw([]byte(`{"type":"subscribe","ref":1,"channel":"` + sid + `!"}`))
	c3.nextOf("error")
	c3.sendRaw([]byte(`not json ` + ticket))
	c3.nextOf("error")

	// Revoke: every socket of the session closes.
	if st, _ := r.api(t, "DELETE", "/api/sessions/"+sid, testAPIKey, nil); st != 204 {
		t.Fatalf("revoke: %d", st)
	}
	for _, c := range []*client{c1, c2, c3} {
		c.closeCode()
	}
	srv.Client().Ping(context.Background())

	resp, err := http.Get(r.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "connect refused") || !strings.Contains(logs, "session revoked") {
		t.Fatalf("the logs lack the session's events; is the log level debug?\n%s", logs)
	}
	for name, secret := range map[string]string{"session id": sid, "ticket": ticket, "API key": testAPIKey} {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s appears in the logs", name)
		}
		if strings.Contains(string(metrics), secret) {
			t.Errorf("the %s appears in /metrics", name)
		}
	}
}
