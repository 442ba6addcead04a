package e2e

import (
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/heraldgw/herald/web"
)

// appPage is a page of an app on another origin that uses Herald: it
// imports herald.js (a copy served by the app: a module script from another
// origin would need CORS headers on the gateway's static files) and, with
// a ticket endpoint, connects with a one-time ticket from its own backend.
var appPage = template.Must(template.New("app").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title></head>
<body data-state="idle">
<h1>{{.Title}}</h1>
<p>Herald: <span id="state">idle</span> · node <span id="node">—</span></p>
<ul id="events"></ul>
<script type="module">
import { Herald } from '/herald.js';
window.states = [];
const opts = { url: {{.WS}} };
{{if .Ticket}}
opts.ticket = async () => {
  const r = await fetch('/ticket', { method: 'POST' });
  if (!r.ok) throw Object.assign(new Error('ticket: ' + r.status), { status: r.status });
  return (await r.json()).ticket;
};
{{end}}
const h = new Herald(opts);
h.on('state', (state, info) => {
  window.states.push({ state, ...info });
  document.body.dataset.state = state;
  document.getElementById('state').textContent = state;
});
h.on('welcome', (f) => { document.getElementById('node').textContent = f.node; });
h.on('effect.complete', (data) => {
  const li = document.createElement('li');
  li.dataset.effectId = data.userEffectId;
  li.textContent = data.userEffectId;
  document.getElementById('events').append(li);
});
</script>
</body></html>
`))

// appServer is an app on its own origin. Its backend holds the user's
// Herald session id and trades it for tickets, as PROTOCOL §7 intends.
type appServer struct {
	*httptest.Server
	title   string
	ticket  bool                    // serve POST /ticket and use it
	cluster atomic.Pointer[cluster] // set once the cluster runs
	mu      sync.Mutex
	sid     string // the backend's session id for the page's user
	tickets int    // tickets handed out
}

func newAppServer(t *testing.T, title string, ticket bool) *appServer {
	t.Helper()
	a := &appServer{title: title, ticket: ticket}
	mux := http.NewServeMux()
	mux.Handle("GET /herald.js", http.FileServerFS(web.FS()))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		c := a.cluster.Load()
		if c == nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		appPage.Execute(w, map[string]any{"Title": a.title, "WS": "ws://" + c.lbAddr + "/ws", "Ticket": a.ticket})
	})
	if ticket {
		mux.HandleFunc("POST /ticket", func(w http.ResponseWriter, r *http.Request) {
			a.mu.Lock()
			sid := a.sid
			a.mu.Unlock()
			tk, st, err := a.cluster.Load().ticket(sid)
			if err != nil || st != http.StatusCreated {
				http.Error(w, fmt.Sprintf("ticket: %d %v", st, err), http.StatusBadGateway)
				return
			}
			a.mu.Lock()
			a.tickets++
			a.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			fmt.Fprintf(w, `{"ticket":%q}`, tk)
		})
	}
	a.Server = httptest.NewServer(mux)
	t.Cleanup(a.Close)
	return a
}

func (a *appServer) host() string { return strings.TrimPrefix(a.URL, "http://") }

func (a *appServer) setSession(sid string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sid = sid
}

func (a *appServer) ticketsIssued() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tickets
}

// TestCrossOriginPages: a page of an allowed app on another origin connects
// with a ticket its backend fetched and gets its user's events; a page of a
// foreign origin is refused although the browser holds a session cookie for
// the gateway's host (cross-site WebSocket hijacking).
func TestCrossOriginPages(t *testing.T) {
	app := newAppServer(t, "Allowed app", true)
	foreign := newAppServer(t, "Foreign site", false)
	c := startCluster(t, clusterOptions{origins: func(lb string) string {
		return lb + "," + app.host() // the demo page's own origin, and the app
	}})
	app.cluster.Store(c)
	foreign.cluster.Store(c)
	b := newBrowser(t)

	// A session cookie for the gateway's host, as a user of the demo page has.
	demo := b.tab("demo")
	demo.do("log in on the demo page",
		chromedp.Navigate(c.url("/")),
		chromedp.WaitVisible(chromedp.CSS(`#login-user`)),
		chromedp.SetValue(chromedp.CSS(`#login-user`), "victim"),
		chromedp.Click(chromedp.CSS(`#login-btn`)),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
	)

	t.Run("allowed origin with a ticket", func(t *testing.T) {
		user := "grace-" + uuid.NewString()[:8]
		sid := c.session(user)
		app.setSession(sid)
		page := b.tab("app")
		page.do("open the app page",
			chromedp.Navigate(app.URL+"/"),
			chromedp.WaitVisible(chromedp.CSS(`body[data-state="open"]`)),
		)
		if node := page.text(`#node`); c.gateways[node] == nil {
			t.Errorf("#node shows %q, want a or b", node)
		}
		if n := app.ticketsIssued(); n < 1 {
			t.Errorf("tickets issued: %d, want ≥ 1", n)
		}
		// The page is open, so its socket was recorded (tab's listener):
		// an empty list would check nothing.
		sockets := page.sockets.all()
		if len(sockets) == 0 {
			t.Error("no socket URL recorded for the app page, which is open")
		}
		for _, u := range sockets {
			if !strings.Contains(u, "ticket=") || strings.Contains(u, sid) {
				t.Errorf("socket URL %q: want a ticket and never the session id", u)
			}
		}
		effect, _ := c.complete(context.Background(), c.publisher(), user)
		page.waitVisible("the completion", fmt.Sprintf(`li[data-effect-id=%q]`, effect))
	})

	t.Run("foreign origin without a ticket is refused", func(t *testing.T) {
		page := b.tab("foreign")
		page.do("open the foreign page", chromedp.Navigate(foreign.URL+"/"))
		// Refused handshakes: the client sees sockets that never opened and
		// keeps backing off.
		page.waitJS("two refused connects",
			`window.states && window.states.filter((s) => s.state === 'reconnecting' && s.opened === false).length >= 2`)
		states := evaluate(page, "read states", chromedp.Evaluate[[]map[string]any](`window.states`))
		for _, s := range states {
			if s["state"] == "open" {
				t.Errorf("foreign page connected: %v", states)
			}
		}
		// nginx saw the gateway refuse them for their Origin (403), though
		// the browser sent the session cookie along.
		origin := fmt.Sprintf(`origin="%s"`, foreign.URL)
		refused := `"GET /ws HTTP/1.1" 403 ` + origin + ` sid=yes`
		eventually(t, "nginx to log the refusals", stepTimeout, func() bool {
			return strings.Count(c.accessLog(), refused) >= 2
		})
		for _, line := range strings.Split(c.accessLog(), "\n") {
			if strings.Contains(line, origin) && !strings.Contains(line, `" 403 `) {
				t.Errorf("foreign origin got through: %s", line)
			}
		}
	})
}
