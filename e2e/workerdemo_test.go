package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
)

// demoKinds are the kinds `worker demo` picks from (cmd/worker/demo.go).
var demoKinds = map[string]bool{"blur": true, "sepia": true, "pixelate": true, "vignette": true, "sharpen": true}

// TestDemoPageShowsWorkerJobs is the first hour of a new user with the
// cluster: the demo page loads without an error in the console, and jobs
// that `worker demo` enqueues for the logged-in user, rendered by
// `worker run`, show as finished cards titled with their kind, with their
// result pictures, next to a job started from the page. Screenshots of the
// page at 1280×800 and, as a phone, 390×844 are saved in the artifacts
// whatever the outcome; on the phone the header stays small and nothing
// overflows sideways. A single-node gateway's page says that its sessions
// live in memory.
func TestDemoPageShowsWorkerJobs(t *testing.T) {
	c := startCluster(t, clusterOptions{})
	bins := binaries(t)
	workerEnv := []string{"PATH=" + os.Getenv("PATH"), "REDIS_URL=" + c.redis.URL()}
	start(t, c.dir, "worker", filepath.Join(bins, "worker"), workerEnv, "run", "--work", "10ms", "--block", "200ms")

	b := newBrowser(t)
	demo := b.tab("demo")
	user := "grace-" + uuid.NewString()[:8]
	demo.do("open the page",
		chromedp.EmulateViewport(1280, 800),
		chromedp.Navigate(c.url("/")),
		chromedp.WaitVisible(chromedp.CSS(`#login-user`)),
	)
	// The page asked whether a session exists; without one that is not an
	// error (it was a 401 from /api/tickets on every fresh load).
	for _, l := range demo.console.all() {
		t.Errorf("console on a fresh load: %s", l)
	}
	if hidden := evaluate(demo, "the memory notes", chromedp.Evaluate[bool](
		`[...document.querySelectorAll('.memory-note')].every((n) => n.hidden)`)); !hidden {
		t.Error("the page says sessions are in memory, but the cluster keeps them in Redis")
	}

	demo.do("log in",
		chromedp.SetValue(chromedp.CSS(`#login-user`), user),
		chromedp.Click(chromedp.CSS(`#login-btn`)),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
	)

	// Three jobs for this user through the worker, one from the page.
	cmd := exec.Command(filepath.Join(bins, "worker"), "demo", "--user", user, "--count", "3", "--rate", "100")
	cmd.Env = workerEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("worker demo: %v\n%s", err, out)
	}
	demo.do("start a job from the page",
		chromedp.SetValue(chromedp.CSS(`#job-kind`), "render"), // not a worker demo kind
		chromedp.Click(chromedp.CSS(`#start-job`)))
	demo.waitJS("four finished cards with their pictures loaded",
		`(() => { const cards = document.querySelectorAll('li.job.done'); return cards.length === 4 && `+
			`[...cards].every((li) => { const img = li.querySelector('img.job-result'); return !img.hidden && img.complete && img.naturalWidth > 0; }); })()`)

	type card struct {
		Kind, Title, Status, Result string
	}
	cards := evaluate(demo, "read the cards", chromedp.Evaluate[[]card](
		`[...document.querySelectorAll('li.job')].map((li) => ({
			Kind: li.dataset.kind,
			Title: li.querySelector('.job-kind').textContent,
			Status: li.querySelector('.job-status').textContent,
			Result: li.querySelector('img.job-result').getAttribute('src') || '',
		}))`))
	fromWorker := 0
	for _, cd := range cards {
		if cd.Title != cd.Kind || cd.Status != "done" || !strings.HasPrefix(cd.Result, "http://"+c.lbAddr+"/dev/results/") {
			t.Errorf("card %+v: want titled with its kind, done, its picture from /dev/results/", cd)
		}
		if demoKinds[cd.Kind] {
			fromWorker++
		}
	}
	if fromWorker != 3 {
		t.Errorf("cards of a worker demo kind: %d, want 3: %+v", fromWorker, cards)
	}
	logText := demo.text(`#log`)
	if strings.Contains(logText, "undefined") || strings.Contains(logText, "null") {
		t.Errorf("the activity log shows a missing value:\n%s", logText)
	}

	desktop := screenshot(demo, "demo-1280x800")
	if desktop.header > 100 {
		t.Errorf("header at 1280×800: %.0f px high", desktop.header)
	}

	demo.do("turn into a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateTouch))
	phone := screenshot(demo, "demo-390x844")
	// A header taller than an eighth of the screen crowds the jobs out
	// (it took a third).
	if phone.header > 844/8 {
		t.Errorf("header at 390×844: %.0f px high, want at most %d", phone.header, 844/8)
	}
	if phone.scrollWidth > 390 {
		t.Errorf("page at 390 px wide scrolls sideways: %d px", phone.scrollWidth)
	}

	// A single-node gateway keeps sessions in memory: its page says that a
	// restart ends them, before and after logging in.
	p, stdout := start(t, c.dir, "gateway-memory", filepath.Join(bins, "gateway"), []string{
		"PATH=" + os.Getenv("PATH"), "HERALD_ADDR=127.0.0.1:0", "HERALD_NODE=solo",
	})
	addr, err := listeningAddr(stdout, 20*time.Second)
	if err != nil {
		t.Fatalf("memory gateway: %v\n%s", err, tail(p.log))
	}
	demo.do("open the single-node page",
		chromedp.Navigate("http://"+addr+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#login-view .memory-note`)),
	)
	screenshot(demo, "login-390x844")
	demo.do("log in on the single-node page",
		chromedp.SetValue(chromedp.CSS(`#login-user`), user),
		chromedp.Click(chromedp.CSS(`#login-btn`)),
		chromedp.WaitVisible(chromedp.CSS(`#app-view .memory-note`)),
	)

	for _, l := range demo.console.all() {
		if strings.Contains(l, ".error") || strings.Contains(l, "exception") || strings.Contains(l, "401") {
			t.Errorf("console: %s", l)
		}
	}
}

// layout is what a screenshot test measures of the page.
type layout struct {
	header      float64 // px, the top bar's height
	scrollWidth int     // px, the document's width
}

// screenshot saves what the tab shows (the viewport) as name.png in the
// test's artifacts and measures the layout.
func screenshot(tb *tab, name string) layout {
	tb.t.Helper()
	// Two animation frames: the layout of the new viewport is painted.
	evaluate(tb, "let "+name+" paint", chromedp.Evaluate[bool](
		`new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))`, chromedp.EvalAwaitPromise))
	png := evaluate(tb, "screenshot "+name, chromedp.CaptureScreenshot())
	path := filepath.Join(artifactDir(tb.t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Errorf("save %s: %v", path, err)
	}
	tb.t.Logf("screenshot: %s", path)
	m := evaluate(tb, "measure "+name, chromedp.Evaluate[map[string]float64](
		`({header: document.querySelector('.topbar').getBoundingClientRect().height, width: document.documentElement.scrollWidth})`))
	return layout{header: m["header"], scrollWidth: int(m["width"])}
}
