package main

import (
	"fmt"
	"net/http"
	"testing"
)

// batchOf returns a batch body of n publications, each to its own channel.
func batchOf(prefix string, n int) map[string]any {
	items := make([]map[string]any, n)
	for i := range items {
		items[i] = map[string]any{"channel": fmt.Sprintf("public:%s-%d", prefix, i), "event": "e"}
	}
	return map[string]any{"items": items}
}

// TestPublishLimitCountsEvents: a batch of n costs n from the API key's
// budget, across replicas; a refused batch publishes nothing and costs
// nothing; a batch larger than the burst could never pass and is 400.
func TestPublishLimitCountsEvents(t *testing.T) {
	srv, rs := cluster(t, 2, map[string]string{"HERALD_PUBLISH_RATE": "0.001", "HERALD_PUBLISH_BURST": "150"})
	rdb := srv.Client()
	streams := func() int {
		var n int
		iter := rdb.Scan(t.Context(), 0, "herald:{h*}:h:*", 1000).Iterator() // histories (docs/PROTOCOL.md §10)
		for iter.Next(t.Context()) {
			n++
		}
		return n
	}
	post := func(r *replica, body any) (int, http.Header) {
		t.Helper()
		st, _, hdr := r.apiHeader(t, "POST", "/api/publish/batch", testAPIKey, body)
		return st, hdr
	}

	if st, hdr := post(rs[0], batchOf("a", 100)); st != http.StatusAccepted || hdr.Get("X-RateLimit-Remaining") != "50" {
		t.Fatalf("first batch of 100: %d, remaining %q; want 202 and 50", st, hdr.Get("X-RateLimit-Remaining"))
	}
	st, hdr := post(rs[1], batchOf("b", 100)) // the other replica shares the budget
	if st != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" || hdr.Get("X-RateLimit-Limit") != "150" {
		t.Fatalf("second batch of 100: %d %v; want 429 with Retry-After and X-RateLimit-Limit 150", st, hdr)
	}
	if got := streams(); got != 100 {
		t.Errorf("%d histories after the refused batch, want 100", got)
	}
	if st, _ := post(rs[1], batchOf("c", 50)); st != http.StatusAccepted {
		t.Errorf("a batch of the 50 left: %d, want 202", st)
	}
	if st, _ := rs[0].api(t, "POST", "/api/publish", testAPIKey, map[string]any{"channel": "user:1", "event": "e"}); st != http.StatusTooManyRequests {
		t.Errorf("a single publish with the budget spent: %d, want 429", st)
	}
}

// TestBatchOverTheBurstIs400: a batch that the burst could never pay for is
// refused as a bad request, not as a rate limit a client would wait out.
func TestBatchOverTheBurstIs400(t *testing.T) {
	_, rs := cluster(t, 1, map[string]string{"HERALD_PUBLISH_BURST": "10"})
	st, body := rs[0].api(t, "POST", "/api/publish/batch", testAPIKey, batchOf("x", 11))
	if e, _ := body["error"].(map[string]any); st != http.StatusBadRequest || e["field"] != "items" {
		t.Errorf("batch of 11 with a burst of 10: %d %v, want 400 naming items", st, body)
	}
	if st, _ := rs[0].api(t, "POST", "/api/publish/batch", testAPIKey, batchOf("x", 10)); st != http.StatusAccepted {
		t.Errorf("batch of 10: %d, want 202", st)
	}
}
