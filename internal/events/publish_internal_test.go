package events

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/heraldgw/herald/internal/redistest"
)

// TestScriptCallRepeatPublishesOnce: go-redis sends a script call again
// when its reply was lost; the repeat returns the first run's ids and
// publishes nothing.
func TestScriptCallRepeatPublishesOnce(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	l := NewRedisLog(rdb, Names{}, LogConfig{})
	c := &appendCall{pubs: []Publication{{Channel: "user:r", Event: "e", Data: json.RawMessage("1")}}, owners: []string{"n"}}
	c.ids = make([]string, 1)
	sc := l.scriptCall("", []group{{call: c, idx: []int{0}}})
	first, err := publishScript.Run(ctx, rdb, sc.keys, sc.args...).Slice()
	if err != nil {
		t.Fatal(err)
	}
	again, err := publishScript.Run(ctx, rdb, sc.keys, sc.args...).Slice()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(first) != fmt.Sprint(again) {
		t.Fatalf("repeat returned %v, first run %v", again, first)
	}
	r, err := l.Range(ctx, "user:r", "")
	if err != nil || len(r.Events) != 1 {
		t.Fatalf("history after a repeated call: %d events (%v), want 1", len(r.Events), err)
	}
}

// TestConcurrentAppendsShareScriptCalls: calls made at once are published
// together, each stays atomic with its own idempotency key, and a key
// reused for other content fails only its own call.
func TestConcurrentAppendsShareScriptCalls(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	l := NewRedisLog(rdb, Names{}, LogConfig{})
	if _, err := l.Append(ctx, "k1:taken", Publication{Channel: "public:a", Event: "e"}); err != nil {
		t.Fatal(err)
	}
	rdb.ConfigResetStat(ctx)
	const n = 200
	var wg sync.WaitGroup
	ids := make([][]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			key := ""
			if i%10 == 0 {
				key = fmt.Sprintf("k1:job-%d", i)
			}
			if i == 7 {
				key = "k1:taken" // used before for public:a
			}
			ch := fmt.Sprintf("user:%d", i%20)
			ids[i], errs[i] = l.Append(ctx, key,
				Publication{Channel: ch, Event: "e", Data: json.RawMessage(fmt.Sprint(i))},
				Publication{Channel: "public:all", Event: "e", Data: json.RawMessage(fmt.Sprint(i))})
		})
	}
	wg.Wait()
	for i := range n {
		switch {
		case i == 7 && errs[i] != ErrIdempotencyConflict:
			t.Errorf("call %d reused a key: %v, want ErrIdempotencyConflict", i, errs[i])
		case i != 7 && (errs[i] != nil || len(ids[i]) != 2):
			t.Errorf("call %d: %v, %v", i, ids[i], errs[i])
		}
	}
	// Every published event is in its channel's history, in id order.
	r, err := l.Range(ctx, "public:all", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range r.Events {
		got = append(got, e.ID)
	}
	var want []string
	for i := range n {
		if i != 7 {
			want = append(want, ids[i][1])
		}
	}
	slices.SortFunc(want, CompareIDs)
	if len(got) != DefaultHistorySize || !slices.Equal(got, want[len(want)-DefaultHistorySize:]) {
		t.Errorf("public:all history: %d events, not the newest %d published", len(got), DefaultHistorySize)
	}
	info, _ := rdb.Info(ctx, "commandstats").Result()
	t.Logf("%d calls published; commandstats:\n%s", n, info)
}
