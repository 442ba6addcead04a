package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// TestRedisClusterGateways: two gateways in cluster mode on a Redis Cluster
// of three masters (one replica each), WebSocket clients on both spread
// over channels on every master, publishes through both (batches over
// channels of several slots) at over 1,000 events/s, and in the middle
// `redis-cli --cluster reshard` moves slots that hold live channels to
// another master. Every client ends with exactly the acknowledged events of
// its channels, in order, once; each channel is then subscribed (one
// subscriber per gateway) on the node that owns it now, and nowhere else.
// The classic PUBLISH effect:complete ingress works on the cluster too.
func TestRedisClusterGateways(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	rdb := c.Client()
	chans, reshard := clusterChannels(t, c, rdb)
	env := map[string]string{
		"REDIS_URL": c.URL(), "HERALD_REDIS_MODE": "cluster",
		"HERALD_PUBLISH_RATE": "100000", "HERALD_PUBLISH_BURST": "100000",
		// The window must cover a channel's events while its slot moves.
		"HERALD_HISTORY_SIZE": "10000",
	}
	gws := []*replica{startReplica(t, "a", env), startReplica(t, "b", env)}

	// Three clients per gateway, each on a third of the channels.
	var subs []*channelLog
	for _, g := range gws {
		sid := g.newSession(t, "u-"+g.name)
		for i := range 3 {
			cl := dial(t, g.wsURL(""), bearerHeader(sid))
			cl.nextOf("welcome")
			var mine []string
			for j := i; j < len(chans); j += 3 {
				cl.subscribe(chans[j])
				mine = append(mine, chans[j])
			}
			subs = append(subs, collect(t, cl, mine))
		}
	}

	// The classic ingress: one event on the user's channel, whichever
	// gateways hear the PUBLISH.
	effect := uuid.NewString()
	classic := dial(t, gws[1].wsURL(""), bearerHeader(gws[1].newSession(t, "classic-user")))
	classic.nextOf("welcome")
	payload := fmt.Sprintf(`{"userEffectId":%q,"resultUrl":"/r.png","timestamp":1,"userId":"classic-user"}`, effect)
	if err := rdb.Publish(context.Background(), events.ClassicChannel, payload).Err(); err != nil {
		t.Fatal(err)
	}
	if ev := classic.nextOf("event"); ev.str("event") != events.EffectComplete {
		t.Errorf("classic message: got %v", ev)
	}

	p := startHTTPStream(t, gws, chans)
	p.waitTotal(t, 1000)
	start := time.Now()
	c.Reshard(reshard.from, reshard.to, reshard.slots)
	t.Logf("resharded %d slots (%d live channels) from %s to %s in %v, %d events acknowledged so far",
		reshard.slots, len(reshard.live), reshard.fromAddr, reshard.toAddr, time.Since(start).Round(time.Millisecond), p.total())
	p.waitTotal(t, p.total()+1000)
	acked := p.stop(t)

	for i, s := range subs {
		s.check(t, i, acked)
	}
	masters := c.Masters()
	for _, ch := range chans {
		slot, _ := rdb.ClusterKeySlot(context.Background(), names().PubSub(ch)).Result()
		for _, m := range masters {
			n := redis.NewClient(&redis.Options{Addr: m.Addr})
			got, err := n.PubSubShardNumSub(context.Background(), names().PubSub(ch)).Result()
			n.Close()
			if err != nil {
				t.Fatal(err)
			}
			want := int64(0)
			if ownsSlot(m, int(slot)) {
				want = 2
			}
			if got[names().PubSub(ch)] != want {
				t.Errorf("%s on %s: %d shard subscribers, want %d", ch, m.Addr, got[names().PubSub(ch)], want)
			}
		}
	}
	for _, g := range gws {
		if moves := g.metric(t, "herald_pubsub_moves_total"); moves < 2 {
			t.Errorf("gateway %s followed %v moves, want the 2 moved partitions", g.name, moves)
		}
	}
	if n := classic.countEvents(); n != 0 {
		t.Errorf("classic message: %d more events, want it once", n)
	}
}

func names() events.Names { return events.Names{} }

func ownsSlot(m redistest.ClusterNode, slot int) bool {
	for _, r := range m.Slots {
		if slot >= r[0] && slot <= r[1] {
			return true
		}
	}
	return false
}

// reshardPlan is a reshard that moves the lowest slots of one master,
// holding live channels, to another.
type reshardPlan struct {
	from, to, fromAddr, toAddr string
	slots                      int
	live                       []string
}

// clusterChannels picks 12 channels in 12 partitions, four on each master,
// two of them in the lowest partitions of the first master, and the
// reshard that moves those two to the second master.
func clusterChannels(t *testing.T, c *redistest.Cluster, rdb *redis.ClusterClient) ([]string, reshardPlan) {
	t.Helper()
	masters := c.Masters()
	sort.Slice(masters, func(i, j int) bool { return masters[i].Slots[0][0] < masters[j].Slots[0][0] })
	partsOf := map[string][][2]int{} // master → its partitions' {slot, partition}, by slot
	for p := range events.Partitions {
		slot, err := rdb.ClusterKeySlot(context.Background(), events.Tag(p)).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range masters {
			if ownsSlot(m, int(slot)) {
				partsOf[m.ID] = append(partsOf[m.ID], [2]int{int(slot), p})
			}
		}
	}
	inPartition := func(p int) string {
		for i := 0; ; i++ {
			if ch := fmt.Sprintf("public:cl-%d", i); events.Partition(ch) == p {
				return ch
			}
		}
	}
	var chans []string
	for _, m := range masters {
		ps := partsOf[m.ID]
		slices.SortFunc(ps, func(a, b [2]int) int { return a[0] - b[0] })
		for _, sp := range ps[:4] {
			chans = append(chans, inPartition(sp[1]))
		}
	}
	a, b := masters[0], masters[1]
	low := partsOf[a.ID]
	plan := reshardPlan{
		from: a.ID, to: b.ID, fromAddr: a.Addr, toAddr: b.Addr,
		slots: low[1][0] - a.Slots[0][0] + 1, // up to the second-lowest partition
		live:  chans[:2],
	}
	return chans, plan
}

// channelLog collects the event ids a client receives, per channel, and
// any gap notice.
type channelLog struct {
	mu   sync.Mutex
	ids  map[string][]string
	gaps []string
	chs  []string
}

// collect reads cl's frames in the background until it closes.
func collect(t *testing.T, cl *client, chs []string) *channelLog {
	l := &channelLog{ids: map[string][]string{}, chs: chs}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case f := <-cl.frames:
				l.mu.Lock()
				switch f.str("type") {
				case "event":
					l.ids[f.str("channel")] = append(l.ids[f.str("channel")], f.str("id"))
				case "gap":
					l.gaps = append(l.gaps, f.str("channel"))
				}
				l.mu.Unlock()
			case <-cl.closed:
				return
			}
		}
	}()
	t.Cleanup(func() { cl.c.CloseNow(); <-done })
	return l
}

func (l *channelLog) on(ch string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ids[ch])
}

// check waits until the client has the last acknowledged id of each of its
// channels, then requires exactly the acknowledged ids, in order.
func (l *channelLog) check(t *testing.T, i int, acked map[string][]string) {
	t.Helper()
	for _, ch := range l.chs {
		want := acked[ch]
		deadline := time.Now().Add(30 * time.Second)
		for len(want) > 0 && !slices.Contains(l.on(ch), want[len(want)-1]) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling for delivery, not synchronising
		}
		if got := l.on(ch); !slices.Equal(got, want) {
			d := firstDiff(got, want)
			t.Errorf("client %d, %s: %d events, want the %d acknowledged in order; first difference at %d", i, ch, len(got), len(want), d)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.gaps) > 0 {
		t.Errorf("client %d: gap notices on %v", i, l.gaps)
	}
}

// countEvents drains the frames waiting and counts the events among them.
func (cl *client) countEvents() int {
	n := 0
	for {
		select {
		case f := <-cl.frames:
			if f.str("type") == "event" {
				n++
			}
		default:
			return n
		}
	}
}

// httpStream publishes batches through POST /api/publish/batch, each
// request on the next gateway, from six workers that own two channels
// each: a batch holds three events on each of its worker's channels (so
// it spans slots). A refused or failed request is sent again, with its
// Idempotency-Key, until it succeeds.
type httpStream struct {
	mu    sync.Mutex
	acked map[string][]string
	n     atomic.Int64
	retry atomic.Int64
	halt  chan struct{}
	wg    sync.WaitGroup
	began time.Time
}

func startHTTPStream(t *testing.T, gws []*replica, chans []string) *httpStream {
	s := &httpStream{acked: map[string][]string{}, halt: make(chan struct{}), began: time.Now()}
	const workers = 6
	for w := range workers {
		mine := []string{chans[w], chans[w+workers]}
		s.wg.Go(func() { s.run(t, w, gws, mine) })
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *httpStream) run(t *testing.T, w int, gws []*replica, chs []string) {
	tick := time.NewTicker(20 * time.Millisecond) // 6 events per 20 ms per worker: 1,800/s in all at most
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-s.halt:
			return
		case <-tick.C:
		}
		items := []map[string]any{}
		for k := range 3 {
			for _, ch := range chs {
				items = append(items, map[string]any{"channel": ch, "event": "n", "data": n*3 + k})
			}
		}
		body, _ := json.Marshal(map[string]any{"items": items})
		key := fmt.Sprintf("w%d-%d", w, n)
		var ids []string
		for attempt := 0; ids == nil; attempt++ {
			if attempt > 0 {
				s.retry.Add(1)
				if attempt > 300 {
					t.Errorf("batch %s kept failing", key)
					return
				}
				time.Sleep(20 * time.Millisecond) // back-off before the retry of a failed publish
			}
			ids = postBatch(gws[(n+attempt)%len(gws)], key, body)
		}
		s.mu.Lock()
		for i, it := range items {
			ch := it["channel"].(string)
			s.acked[ch] = append(s.acked[ch], ids[i])
		}
		s.mu.Unlock()
		s.n.Add(int64(len(ids)))
	}
}

// postBatch sends one batch with its Idempotency-Key; nil unless accepted.
func postBatch(g *replica, key string, body []byte) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", g.url("/api/publish/batch"), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out struct{ IDs []string }
	if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return nil
	}
	return out.IDs
}

func (s *httpStream) total() int { return int(s.n.Load()) }

func (s *httpStream) waitTotal(t *testing.T, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d acknowledged events", n), func() bool { return s.total() >= n })
}

// stop ends the stream and returns the acknowledged ids per channel.
func (s *httpStream) stop(t *testing.T) map[string][]string {
	select {
	case <-s.halt:
	default:
		close(s.halt)
		s.wg.Wait()
		el := time.Since(s.began)
		t.Logf("published %d events in %v (%.0f/s) through both gateways; %d requests retried", s.total(), el.Round(time.Millisecond), float64(s.total())/el.Seconds(), s.retry.Load())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}
