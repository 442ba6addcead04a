package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/heraldgw/herald"
)

// publisher publishes through Redis with the Go package, as a worker does.
func (c *cluster) publisher() herald.Publisher {
	return herald.NewRedisPublisher(c.redis.Client(), herald.RedisConfig{})
}

// complete publishes an effect-complete event for user through the Go
// package and returns the effect id and the event id on user:{user}.
func (c *cluster) complete(ctx context.Context, p herald.Publisher, user string) (effect, userEventID string) {
	c.t.Helper()
	effect = uuid.NewString()
	ids, err := herald.PublishEffectComplete(ctx, p, herald.EffectComplete{
		UserID: user, UserEffectID: effect, ResultURL: "/dev/results/" + effect + ".svg",
	})
	if err != nil || len(ids) != 2 {
		c.t.Fatalf("publish effect complete: %v %v", ids, err)
	}
	return effect, ids[1] // effect:{id} first, then user:{user}
}

// jobDone is the demo page's selector of a finished job card.
func jobDone(effect string) string {
	return fmt.Sprintf(`li.job.done[data-effect-id=%q]`, effect)
}

// TestDemoPageSurvivesReplicaKill drives the demo page through nginx in
// front of two replicas: it shows a completion published with the Go
// package; then the replica holding its socket is killed, and the page
// reconnects through nginx to the other one, resuming after the last event
// it got, and shows the completions published meanwhile and after.
func TestDemoPageSurvivesReplicaKill(t *testing.T) {
	c := startCluster(t, clusterOptions{})
	survivesReplicaKill(t, c, newBrowser(t).tab("demo"), "websocket")
}

// TestDemoPageOverSSE: behind a proxy that refuses WebSockets (403 on
// /ws), the demo page falls back to Server-Sent Events by itself, gets
// completions live, and survives a replica kill as it does over sockets.
func TestDemoPageOverSSE(t *testing.T) {
	c := startCluster(t, clusterOptions{site: blockWebSockets})
	demo := newBrowser(t).tab("demo-sse")
	survivesReplicaKill(t, c, demo, "sse")
	if demo.sockets.len() == 0 {
		t.Error("the page never tried a WebSocket")
	}
	if !c.logged(`"GET /ws`, `" 403 `) {
		t.Errorf("nginx refused no WebSocket; its log:\n%s", c.accessLog())
	}
}

// blockWebSockets makes nginx refuse every WebSocket upgrade, as some
// corporate proxies do.
func blockWebSockets(t *testing.T, site string) string {
	const at = "    location / {"
	if !strings.Contains(site, at) {
		t.Fatalf("nginx site has no %q to put the block before", at)
	}
	return strings.Replace(site, at, "    location = /ws { return 403; }\n\n"+at, 1)
}

// survivesReplicaKill is the replica-kill scenario of the demo page on c,
// whose client must use transport.
func survivesReplicaKill(t *testing.T, c *cluster, demo *tab, transport string) {
	t.Helper()
	ctx := context.Background()
	pub := c.publisher()
	user := "ada-" + uuid.NewString()[:8]

	demo.do("log in",
		chromedp.Navigate(c.url("/")),
		chromedp.WaitVisible(chromedp.CSS(`#login-user`)),
		chromedp.SetValue(chromedp.CSS(`#login-user`), user),
		chromedp.Click(chromedp.CSS(`#login-btn`)),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
	)
	first := demo.text(`#node`)
	if c.gateways[first] == nil {
		t.Fatalf("#node shows %q, want a or b", first)
	}
	if mode := evaluate(demo, "the client's transport", chromedp.Evaluate[string](`herald.mode`)); mode != transport {
		t.Fatalf("the client uses %s, want %s", mode, transport)
	}
	if got := demo.text(`#user`); got != user {
		t.Errorf("#user shows %q, want %q", got, user)
	}

	// A completion published through the Go package reaches the page.
	e1, lastSeen := c.complete(ctx, pub, user)
	demo.waitVisible("the first completion", jobDone(e1))

	// A channel that has had no event yet: an effect whose job is still
	// running. Its resume must not report anything missed either.
	quiet := "effect:" + uuid.NewString()
	demo.waitJS("a subscription to a quiet channel", fmt.Sprintf(
		`(window.__quiet ??= herald.subscribe(%s).then(() => true), herald.subs.get(%s)?.ok === true)`,
		jsString(quiet), jsString(quiet)))

	// The replica holding the socket dies while the page is frozen, so the
	// completions published "meanwhile" are certainly published before the
	// page can reconnect anywhere.
	demo.setLifecycle(page.SetWebLifecycleStateStateFrozen)
	streamsBefore := demo.streams.len()
	c.gateways[first].kill()
	e2, _ := c.complete(ctx, pub, user)
	e3, _ := c.complete(ctx, pub, user)
	demo.setLifecycle(page.SetWebLifecycleStateStateActive)

	second := c.survivor(first).node
	demo.waitJS("the page open again on "+second, fmt.Sprintf(
		`document.querySelector('#state').dataset.state === 'open' && `+
			`document.querySelector('#node').textContent === %s && `+
			`Number(document.querySelector('#reconnects').textContent) >= 1`, jsString(second)))

	// The client asked to resume after the last event it had delivered: a
	// socket with since=, or a new stream whose cursor begins with it
	// (PROTOCOL §3a).
	wantSince, urls := "since="+lastSeen, demo.sockets.all()
	if transport == "sse" {
		wantSince, urls = "lastEventId=1."+cursorSlot(t, lastSeen), demo.streams.all()[streamsBefore:]
	}
	var resumed bool
	for _, u := range urls {
		resumed = resumed || strings.Contains(u, wantSince)
	}
	if !resumed {
		t.Errorf("no reconnect asked for %s; connections made: %v", wantSince, urls)
	}

	// Neither the personal channel (which had events) nor the quiet one is
	// reported as missing anything: no resync, no error in the page log.
	demo.waitJS("the quiet channel resumed", fmt.Sprintf(
		`herald.subs.get(%s)?.ok === true && herald.state === 'open'`, jsString(quiet)))
	if bad := evaluate(demo, "read the page log for errors", chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('#log .log-line[data-kind="error"] .log-msg')].map((e) => e.textContent)`)); len(bad) > 0 {
		t.Errorf("the page logged errors after the replica kill: %q", bad)
	}
	if rec := evaluate(demo, "the quiet channel's recovered", chromedp.Evaluate[bool](
		fmt.Sprintf(`herald.subs.get(%s).recovered === true`, jsString(quiet)))); !rec {
		t.Error("the quiet channel resumed with recovered:false")
	}

	// The next completion arrives through the surviving replica.
	e4, _ := c.complete(ctx, pub, user)
	demo.waitVisible("the completion after the reconnect", jobDone(e4))

	// Events of a channel arrive in id order, replayed ones before live ones:
	// once e4 is shown, e2 and e3 must be too (resume, PROTOCOL §5).
	shown := evaluate(demo, "which completions are shown", chromedp.Evaluate[map[string]bool](fmt.Sprintf(
		`Object.fromEntries([%s, %s].map((id) => [id, !!document.querySelector('li.job.done[data-effect-id="' + id + '"]')]))`,
		jsString(e2), jsString(e3))))
	if !shown[e2] || !shown[e3] {
		t.Errorf("completions published while the page was reconnecting: shown %v, want both (resumed after %s)", shown, lastSeen)
	}

	// Each event reached the app once: the page logs every delivered event
	// with its id.
	lines := evaluate(demo, "read the event log", chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('#log .log-line[data-kind="event"] .log-msg')].map((e) => e.textContent)`))
	seen := map[string]int{}
	for _, l := range lines {
		seen[l]++
		if seen[l] == 2 {
			t.Errorf("delivered twice: %s", l)
		}
	}
	if len(seen) != 4 {
		t.Errorf("event lines in the page log: %q, want one per completion (4)", lines)
	}

	// The first connection went through nginx to the replica that was
	// killed (nginx logs one when it ends).
	want := []string{fmt.Sprintf(`" 101 origin="http://%s" sid=yes upstream=%s`, c.lbAddr, c.gateways[first].addr)}
	if transport == "sse" { // same-origin: no Origin header
		want = []string{`"GET /sse`, fmt.Sprintf(`" 200 origin="-" sid=yes upstream=%s`, c.gateways[first].addr)}
	}
	eventually(t, "nginx to log the connection to "+first, 5*time.Second, func() bool {
		return c.logged(want...)
	})
}

// cursorSlot is an event id as a slot of an SSE resume cursor: both parts
// in base 36.
func cursorSlot(t *testing.T, id string) string {
	t.Helper()
	ms, seq, ok := strings.Cut(id, "-")
	m, err1 := strconv.ParseUint(ms, 10, 64)
	q, err2 := strconv.ParseUint(seq, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("event id %q", id)
	}
	return strconv.FormatUint(m, 36) + "-" + strconv.FormatUint(q, 36)
}
