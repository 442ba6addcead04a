package e2e

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// These tests hold the deployment's nginx template (the one compose runs)
// to what the gateways behind it rely on; they need no browser.

// getStatus makes a GET request and returns the status, with X-Forwarded-For
// set when xff is not empty.
func getStatus(t *testing.T, url, xff string) int {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestNginxReplacesForwardedFor: a client cannot pick the address the
// gateways see by sending X-Forwarded-For through nginx. Here the client's
// address, 127.0.0.1, is also nginx's, which the gateways trust, as the
// bridge gateway was in the compose stack: were nginx to append to the
// client's header, the gateway would skip the trusted 127.0.0.1 and believe
// the forged entry, and each forged address would get a connect budget of
// its own.
func TestNginxReplacesForwardedFor(t *testing.T) {
	c := startCluster(t, clusterOptions{env: []string{"HERALD_CONNECT_LIMIT=2", "HERALD_CONNECT_WINDOW=1h"}})
	var got []int
	for i := 1; i <= 3; i++ {
		got = append(got, getStatus(t, c.url("/ws"), fmt.Sprintf("203.0.113.%d", i)))
	}
	if got[0] == http.StatusTooManyRequests || got[1] == http.StatusTooManyRequests || got[2] != http.StatusTooManyRequests {
		t.Errorf("three connects from one client, each with another forged X-Forwarded-For, limit 2: statuses %v, want the third refused with 429", got)
	}
}

// TestNginxThroughRedisOutage: while Redis is down every replica answers
// 503, and nginx passes a replica's 503 on (after trying the other) instead
// of marking both replicas down and answering 502 on its own; once Redis is
// back, requests through nginx are served as soon as the replicas are ready,
// not after a fail_timeout.
func TestNginxThroughRedisOutage(t *testing.T) {
	c := startCluster(t, clusterOptions{})
	c.redis.Kill()
	for _, g := range c.gateways {
		waitHTTP(t, g.url("/readyz"), http.StatusServiceUnavailable, g.proc)
	}
	statuses := map[int]int{}
	for range 20 {
		statuses[getStatus(t, c.url("/readyz"), "")]++
	}
	if statuses[http.StatusServiceUnavailable] != 20 {
		t.Errorf("readyz through nginx while Redis is down: %v (status: count), want only 503s", statuses)
	}

	c.redis.Restart()
	for _, g := range c.gateways {
		waitHTTP(t, g.url("/readyz"), http.StatusOK, g.proc)
	}
	for i := range 10 {
		if st := getStatus(t, c.url("/readyz"), ""); st != http.StatusOK {
			t.Fatalf("readyz through nginx, request %d after both replicas are ready again: %d, want 200", i+1, st)
		}
	}
}
