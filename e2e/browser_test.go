package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// stepTimeout bounds each browser step; the race detector and two cores
// make some slow, none of them should take this long.
const stepTimeout = 20 * time.Second

// browserStartTimeout bounds the browser's start, which chromedp does not
// (it waits as long as the context it starts with, which must outlive the
// test): a Chromium that hangs fails the test here, not at go test's
// -timeout with every test's goroutines dumped.
const browserStartTimeout = 60 * time.Second

// browser is one headless Chromium with a fresh profile, closed when the
// test ends.
type browser struct {
	t   *testing.T
	ctx context.Context // the browser's first tab
}

// newBrowser starts Chromium from the system packages. The flags keep it
// from calling home: on a machine without a network its own background
// connections would fail and get in the way.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	exe := need(t, "chromium", "chromium-browser", "google-chrome")
	// What the browser prints, for the failure message and the artifacts.
	logPath := filepath.Join(t.TempDir(), "chromium.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.CombinedOutput(logFile),
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // root in CI and containers
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1280, 860),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	stop := func() {
		cancel()
		cancelAlloc() // kills the browser and waits for it
		logFile.Close()
	}
	// The first Do starts the browser and binds it to the context it gets,
	// so that context has no deadline: a timer bounds the start instead.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			stop()
			keepLog(t, logPath)
			t.Fatalf("start %s: %v", exe, err) // err holds what it printed
		}
	case <-time.After(browserStartTimeout):
		// Kill it. Bounded too: the test fails either way, and the browser
		// dies with the test binary (chromedp sets Pdeathsig).
		done := make(chan struct{})
		go func() { stop(); <-started; close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
		}
		keepLog(t, logPath)
		t.Fatalf("%s did not start within %v; it printed:\n%s", exe, browserStartTimeout, tail(logPath))
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			keepLog(t, logPath)
		}
	})
	return &browser{t: t, ctx: ctx}
}

// tab is one page of the browser. On failure the test saves a screenshot
// of it and logs what the page wrote to its console.
type tab struct {
	t       *testing.T
	name    string
	ctx     context.Context
	console *syncLog // console calls, uncaught exceptions and the browser's own log (failed loads)
	sockets *syncLog // URLs of the WebSockets the page opened
	streams *syncLog // URLs of the SSE streams (EventSource requests) the page made
}

// tab opens a new tab; name labels its screenshot and log lines.
func (b *browser) tab(name string) *tab {
	t := b.t
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	tb := &tab{t: t, name: name, ctx: ctx, console: &syncLog{}, sockets: &syncLog{}, streams: &syncLog{}}
	// Listen calls back on the tab's read loop, before later commands
	// return: a socket the page opened is recorded by the time a poll sees
	// its effect.
	err := chromedp.Listen(ctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var parts []string
			for _, a := range e.Args {
				if len(a.Value) > 0 {
					parts = append(parts, strings.Trim(string(a.Value), `"`))
				} else {
					parts = append(parts, a.Description)
				}
			}
			tb.console.add("console.%s: %s", e.Type, strings.Join(parts, " "))
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			tb.console.add("exception: %s (%s:%d)", msg, d.URL, d.LineNumber+1)
		case *cdplog.EventEntryAdded:
			// What the browser itself logs in the console, such as
			// "Failed to load resource: … status of 401".
			le := e.Entry
			tb.console.add("%s.%s: %s %s", le.Source, le.Level, le.Text, le.URL)
		case *network.EventWebSocketCreated:
			tb.sockets.add("%s", e.URL)
		case *network.EventRequestWillBeSent:
			if e.Type == network.ResourceTypeEventSource {
				tb.streams.add("%s", e.Request.URL)
			}
		}
	})
	if err == nil {
		_, err = chromedp.Call(ctx, network.Enable, network.EnableParams{})
	}
	if err == nil {
		_, err = chromedp.Call(ctx, cdplog.Enable, cdp.Empty{})
	}
	if err != nil {
		cancel()
		t.Fatalf("tab %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			tb.screenshot()
			for _, l := range tb.console.all() {
				t.Logf("[%s] %s", name, l)
			}
		}
		cancel()
	})
	return tb
}

// screenshot saves the whole page as a PNG in the test's artifacts.
func (tb *tab) screenshot() {
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.t.Logf("[%s] screenshot failed: %v", tb.name, err)
		return
	}
	path := filepath.Join(artifactDir(tb.t), safeName(tb.name)+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Logf("[%s] screenshot: %v", tb.name, err)
		return
	}
	tb.t.Logf("[%s] screenshot saved: %s", tb.name, path)
}

// do runs browser steps within the step timeout; what names them in the
// failure.
func (tb *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		tb.t.Fatalf("[%s] %s: %v", tb.name, what, err)
	}
}

// waitJS polls a JavaScript expression until it is truthy.
func (tb *tab) waitJS(what, expr string) {
	tb.t.Helper()
	tb.do("wait for "+what, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(stepTimeout)))
}

// waitVisible waits until an element matching the CSS selector is visible.
func (tb *tab) waitVisible(what, css string) {
	tb.t.Helper()
	tb.do("wait for "+what, chromedp.WaitVisible(chromedp.CSS(css)))
}

// text returns the text of the first element matching the CSS selector.
func (tb *tab) text(css string) string {
	tb.t.Helper()
	return strings.TrimSpace(evaluate[string](tb, "read "+css, chromedp.Text(chromedp.CSS(css))))
}

// evaluate runs one action that returns a value, within the step timeout.
func evaluate[T any](tb *tab, what string, a chromedp.Action[T]) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tb.t.Fatalf("[%s] %s: %v", tb.name, what, err)
	}
	return v
}

// setLifecycle freezes the page (its task queue stops, as a browser does
// with a background tab; events such as a socket closing wait) or makes it
// active again. Freezing makes "while the page was reconnecting" a window
// the test controls.
func (tb *tab) setLifecycle(state page.SetWebLifecycleStateState) {
	tb.t.Helper()
	tb.do("set lifecycle "+string(state), chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.SetWebLifecycleState, page.SetWebLifecycleStateParams{State: state})
		return err
	}))
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string { return fmt.Sprintf("%q", s) }
