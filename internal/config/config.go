// Package config reads Herald's configuration from the environment and
// command-line flags (PROTOCOL §9) into one validated Config.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/heraldgw/herald/internal/origin"
	"github.com/heraldgw/herald/internal/redisclient"
)

// Config is the gateway's whole configuration. The variable that sets each
// field, its unit and its default are in the field's comment.
type Config struct {
	RedisURL        string         // REDIS_URL; unset: single-node, in memory
	Addr            string         // HERALD_ADDR; ":8080"
	APIKeys         []string       // HERALD_API_KEYS, comma-separated; none: APIs refuse everything
	AllowedOrigins  origin.List    // HERALD_ALLOWED_ORIGINS, full origins or host patterns (package origin); none: own host only
	TrustedProxies  []netip.Prefix // HERALD_TRUSTED_PROXIES, CIDRs; none
	SessionCookie   string         // HERALD_SESSION_COOKIE; "sid"
	ConnectLimit    int            // HERALD_CONNECT_LIMIT, connects per client IP per window; 30
	ConnectWindow   time.Duration  // HERALD_CONNECT_WINDOW; 10s
	MaxConns        int            // HERALD_MAX_CONNS, sockets on this replica; from the open-file limit
	MaxConnsPerUser int            // HERALD_MAX_CONNS_PER_USER, across replicas; 20
	ClientMsgRate   float64        // HERALD_CLIENT_MSG_RATE, messages per second per socket; 10
	ClientMsgBurst  int            // HERALD_CLIENT_MSG_BURST; 20
	PublishRate     float64        // HERALD_PUBLISH_RATE, events published per second per API key, shared by replicas; 500
	PublishBurst    int            // HERALD_PUBLISH_BURST; 1000
	PublishLease    time.Duration  // HERALD_PUBLISH_LEASE, how long a replica may spend publish budget taken ahead from Redis; 100ms, 0 off, at most 250ms
	HistorySize     int            // HERALD_HISTORY_SIZE, events kept per channel; 100
	HistoryTTL      time.Duration  // HERALD_HISTORY_TTL; 10m
	RecordTTL       time.Duration  // HERALD_RECORD_TTL, how long a channel's newest id outlives its history; 24h, at least HistoryTTL
	DrainTimeout    time.Duration  // HERALD_DRAIN_TIMEOUT, spread of the 1012 closes on SIGTERM; 10s
	Dev             bool           // HERALD_DEV, demo endpoints; on without REDIS_URL, else off
	DevForce        bool           // HERALD_DEV_FORCE, allow HERALD_DEV with REDIS_URL (a shared Redis); false

	// Beyond PROTOCOL §9 (documented in docs/PROTOCOL.md):
	Node         string        // HERALD_NODE, replica name in welcome frames; the host name
	SessionCheck time.Duration // HERALD_SESSION_CHECK, how often live sockets' sessions are re-checked; 30s
	LogLevel     slog.Level    // HERALD_LOG_LEVEL: debug, info, warn, error; info
	KeyPrefix    string        // HERALD_KEY_PREFIX, prefix of Herald's own Redis keys; empty
	DebugAddr    string        // HERALD_DEBUG_ADDR, loopback address serving net/http/pprof; unset: off

	// Hardening (issue 12, documented in docs/PROTOCOL.md):
	BodyTimeout      time.Duration // HERALD_BODY_TIMEOUT, how long a request body may take to arrive after its headers; 10s
	MaxHTTPConns     int           // HERALD_MAX_HTTP_CONNS, connections not upgraded to WebSocket; 10 % of the open-file limit
	ClientFrameRate  float64       // HERALD_CLIENT_FRAME_RATE, WebSocket frames of every kind a socket may send per second; 50
	ClientFrameBurst int           // HERALD_CLIENT_FRAME_BURST; 100
	ClientByteRate   int           // HERALD_CLIENT_BYTE_RATE, bytes a socket may send per second; 65536
	ClientByteBurst  int           // HERALD_CLIENT_BYTE_BURST, at least 16384; 262144

	// Scaling past one Redis (docs/PROTOCOL.md §9):
	RedisMode      redisclient.Mode // HERALD_REDIS_MODE: single, cluster or sentinel, the form REDIS_URL takes; single
	ReplicaAcks    int              // HERALD_REDIS_REPLICA_ACKS, replicas that must have a publish before it counts; 1 in cluster and sentinel modes, else 0
	ReplicaTimeout time.Duration    // HERALD_REDIS_REPLICA_TIMEOUT, how long one wait for them lasts; 1s

	SessionCheckRate float64 // HERALD_SESSION_CHECK_RATE, sessions this replica re-checks per second at most; 1000
}

// setting is one configuration variable: its environment name, its default
// as text and how to store a value.
type setting struct {
	env   string
	def   string
	usage string
	set   func(c *Config, v string) error
}

func settings() []setting {
	return []setting{
		{"REDIS_URL", "", "Redis URL (redis:// or rediss://); unset: single-node in memory", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
				return errors.New("want redis://host:port or rediss://host:port")
			}
			c.RedisURL = v
			return nil
		}},
		{"HERALD_ADDR", ":8080", "listen address", func(c *Config, v string) error {
			if _, _, err := splitHostPort(v); err != nil {
				return err
			}
			c.Addr = v
			return nil
		}},
		{"HERALD_API_KEYS", "", "comma-separated API keys for the publish and session APIs", func(c *Config, v string) error {
			c.APIKeys = list(v)
			for _, k := range c.APIKeys {
				if len(k) < 16 {
					return errors.New("every key must be at least 16 characters")
				}
			}
			return nil
		}},
		{"HERALD_ALLOWED_ORIGINS", "", "comma-separated allowed browser origins (https://app.example.com) or host patterns (*.example.com); empty: own host only", func(c *Config, v string) error {
			l, err := origin.ParseList(v)
			c.AllowedOrigins = l
			return err
		}},
		{"HERALD_TRUSTED_PROXIES", "", "comma-separated CIDRs whose X-Forwarded-For is believed", func(c *Config, v string) error {
			c.TrustedProxies = nil
			for _, s := range list(v) {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					a, aerr := netip.ParseAddr(s)
					if aerr != nil {
						return fmt.Errorf("%q is not a CIDR", s)
					}
					p = netip.PrefixFrom(a, a.BitLen())
				}
				c.TrustedProxies = append(c.TrustedProxies, p.Masked())
			}
			return nil
		}},
		{"HERALD_SESSION_COOKIE", "sid", "session cookie name", func(c *Config, v string) error {
			if v == "" || strings.ContainsAny(v, " ;,=\t\"") {
				return errors.New("not a cookie name")
			}
			c.SessionCookie = v
			return nil
		}},
		{"HERALD_CONNECT_LIMIT", "30", "WebSocket connects per client IP per window", intSetting(func(c *Config) *int { return &c.ConnectLimit }, 1)},
		{"HERALD_CONNECT_WINDOW", "10s", "sliding window of the connect limit", func(c *Config, v string) error {
			if d, err := time.ParseDuration(v); err == nil && d < time.Millisecond {
				return errors.New("want at least 1ms")
			}
			return durSetting(func(c *Config) *time.Duration { return &c.ConnectWindow })(c, v)
		}},
		{"HERALD_MAX_CONNS", "", "sockets this replica accepts before 503; default from the open-file limit", func(c *Config, v string) error {
			if v == "" {
				c.MaxConns = defaultMaxConns()
				return nil
			}
			return intSetting(func(c *Config) *int { return &c.MaxConns }, 1)(c, v)
		}},
		{"HERALD_MAX_CONNS_PER_USER", "20", "concurrent sockets per user across replicas", intSetting(func(c *Config) *int { return &c.MaxConnsPerUser }, 1)},
		{"HERALD_CLIENT_MSG_RATE", "10", "messages a client may send per second", rateSetting(func(c *Config) *float64 { return &c.ClientMsgRate })},
		{"HERALD_CLIENT_MSG_BURST", "20", "burst of client messages", intSetting(func(c *Config) *int { return &c.ClientMsgBurst }, 1)},
		{"HERALD_PUBLISH_RATE", "500", "events published per second per API key (a batch of n costs n)", rateSetting(func(c *Config) *float64 { return &c.PublishRate })},
		{"HERALD_PUBLISH_BURST", "1000", "most events an API key may publish at once", intSetting(func(c *Config) *int { return &c.PublishBurst }, 1)},
		{"HERALD_PUBLISH_LEASE", "100ms", "how long a replica may spend publish budget it took ahead from Redis (a busy API key then costs one bucket call per lease, not per publish); 0 decides every publish in Redis; at most 250ms", func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > 250*time.Millisecond {
				return errors.New("want a duration from 0 to 250ms")
			}
			c.PublishLease = d
			return nil
		}},
		{"HERALD_HISTORY_SIZE", "100", "events kept per channel for resume", intSetting(func(c *Config) *int { return &c.HistorySize }, 1)},
		{"HERALD_HISTORY_TTL", "10m", "how long events are kept for resume", durSetting(func(c *Config) *time.Duration { return &c.HistoryTTL })},
		{"HERALD_RECORD_TTL", "24h", "how long a channel's newest event id is remembered after its last publish (exact resume after the history expired); at least HERALD_HISTORY_TTL", durSetting(func(c *Config) *time.Duration { return &c.RecordTTL })},
		{"HERALD_DRAIN_TIMEOUT", "10s", "how long a SIGTERM drain spreads its 1012 closes", durSetting(func(c *Config) *time.Duration { return &c.DrainTimeout })},
		{"HERALD_DEV", "", "demo/dev endpoints; default on without REDIS_URL", func(c *Config, v string) error {
			if v == "" {
				c.Dev = c.RedisURL == ""
				return nil
			}
			return boolSetting(func(c *Config) *bool { return &c.Dev })(c, v)
		}},
		{"HERALD_DEV_FORCE", "false", "allow HERALD_DEV with REDIS_URL: anyone may log in as anyone on every replica sharing that Redis",
			boolSetting(func(c *Config) *bool { return &c.DevForce })},
		{"HERALD_NODE", "", "replica name shown in welcome frames; default the host name", func(c *Config, v string) error {
			if v == "" {
				v, _ = os.Hostname()
			}
			c.Node = v
			return nil
		}},
		{"HERALD_SESSION_CHECK", "30s", "how often open sockets' sessions are re-checked", durSetting(func(c *Config) *time.Duration { return &c.SessionCheck })},
		{"HERALD_LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
			return c.LogLevel.UnmarshalText([]byte(v))
		}},
		{"HERALD_KEY_PREFIX", "", "prefix of Herald's own Redis keys", func(c *Config, v string) error {
			if strings.ContainsAny(v, "{}") {
				return errors.New("must not contain { or }: Herald's keys carry their own Redis Cluster hash tags")
			}
			c.KeyPrefix = v
			return nil
		}},
		{"HERALD_DEBUG_ADDR", "", "loopback address serving /debug/pprof/ (profiles); unset: off", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			host, _, err := splitHostPort(v)
			if err != nil {
				return err
			}
			// Profiles show the process's inside: never on a public address.
			if ip, perr := netip.ParseAddr(host); host != "localhost" && (perr != nil || !ip.IsLoopback()) {
				return errors.New("want a loopback address, e.g. 127.0.0.1:6060")
			}
			c.DebugAddr = v
			return nil
		}},
		{"HERALD_BODY_TIMEOUT", "10s", "how long a request body may take to arrive after its headers", durSetting(func(c *Config) *time.Duration { return &c.BodyTimeout })},
		{"HERALD_MAX_HTTP_CONNS", "", "HTTP connections not upgraded to WebSocket; at the cap the stalest is closed; default from the open-file limit", func(c *Config, v string) error {
			if v == "" {
				c.MaxHTTPConns = defaultMaxHTTPConns()
				return nil
			}
			return intSetting(func(c *Config) *int { return &c.MaxHTTPConns }, 1)(c, v)
		}},
		{"HERALD_CLIENT_FRAME_RATE", "50", "WebSocket frames of every kind a socket may send per second", rateSetting(func(c *Config) *float64 { return &c.ClientFrameRate })},
		{"HERALD_CLIENT_FRAME_BURST", "100", "burst of WebSocket frames", intSetting(func(c *Config) *int { return &c.ClientFrameBurst }, 1)},
		{"HERALD_CLIENT_BYTE_RATE", "65536", "bytes a socket may send per second", intSetting(func(c *Config) *int { return &c.ClientByteRate }, 1)},
		// A burst below 16 KiB could refuse a single read of one legal 4 KiB frame.
		{"HERALD_CLIENT_BYTE_BURST", "262144", "burst of bytes a socket may send", intSetting(func(c *Config) *int { return &c.ClientByteBurst }, 16<<10)},
		{"HERALD_REDIS_MODE", "single", "single, cluster or sentinel: how REDIS_URL is read (go-redis URL forms; cluster seeds and Sentinels as addr=, the master as master_name=)", func(c *Config, v string) error {
			m, err := redisclient.ParseMode(v)
			if err != nil {
				return err
			}
			if c.RedisURL != "" {
				if err := redisclient.Check(m, c.RedisURL); err != nil {
					return fmt.Errorf("REDIS_URL does not fit: %w", err)
				}
			}
			c.RedisMode = m
			return nil
		}},
		{"HERALD_REDIS_REPLICA_ACKS", "", "replicas of a Redis primary that must have an event before its publish succeeds and subscribers get it (WAIT); default 1 in cluster and sentinel modes, 0 in single mode; 0: publish at once (a failover may then lose acknowledged events)", func(c *Config, v string) error {
			if v == "" {
				c.ReplicaAcks = redisclient.DefaultReplicaAcks(c.RedisMode)
				return nil
			}
			return intSetting(func(c *Config) *int { return &c.ReplicaAcks }, 0)(c, v)
		}},
		{"HERALD_SESSION_CHECK_RATE", "1000", "sessions of open sockets this replica re-checks in Redis per second at most; beyond HERALD_SESSION_CHECK × this many sessions, each is checked less often", rateSetting(func(c *Config) *float64 { return &c.SessionCheckRate })},
		{"HERALD_REDIS_REPLICA_TIMEOUT", "1s", "how long a publish waits for HERALD_REDIS_REPLICA_ACKS replicas before it is tried again (and, after 5s in all, refused)", durSetting(func(c *Config) *time.Duration { return &c.ReplicaTimeout })},
	}
}

// Load reads the configuration from args (flags named like the variables in
// lower-case kebab form, e.g. -herald-addr, -redis-url) and getenv. A flag
// wins over its variable. A bad value is an error naming the variable.
// With -h or -help it writes the flags, their variables and defaults to
// stderr and returns flag.ErrHelp.
func Load(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	ss := settings()
	fs := flag.NewFlagSet("herald", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(stderr, ss) }
	flags := make(map[string]*string, len(ss))
	for _, s := range ss {
		flags[s.env] = fs.String(FlagName(s.env), "", s.usage+" (env "+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var c Config
	for _, s := range ss {
		v := getenv(s.env)
		if set[FlagName(s.env)] {
			v = *flags[s.env]
		}
		v = strings.TrimSpace(v)
		if v == "" {
			v = s.def
		}
		if err := s.set(&c, v); err != nil {
			return Config{}, fmt.Errorf("%s: bad value %q: %w", s.env, redact(s.env, v), err)
		}
	}
	if c.RecordTTL < c.HistoryTTL {
		return Config{}, fmt.Errorf("HERALD_RECORD_TTL: %v is shorter than HERALD_HISTORY_TTL (%v): a channel's record must outlive its history", c.RecordTTL, c.HistoryTTL)
	}
	if c.Dev && c.RedisURL != "" && !c.DevForce {
		return Config{}, errors.New("HERALD_DEV: dev mode lets anyone log in as anyone, on every replica sharing REDIS_URL; " +
			"unset HERALD_DEV, or set HERALD_DEV_FORCE=true if this Redis is yours alone")
	}
	return c, nil
}

// usage writes every flag with its variable and default. Only defaults are
// shown, never the environment's values, which may hold secrets.
func usage(w io.Writer, ss []setting) {
	fmt.Fprint(w, `usage: gateway [flags]

Every flag is also an environment variable: -herald-addr is HERALD_ADDR.
A flag wins over its variable. Without REDIS_URL the gateway runs
single-node in memory, with the demo page and its dev endpoints.

`)
	for _, s := range ss {
		def := ""
		if s.def != "" {
			def = fmt.Sprintf(" (default %s)", s.def)
		}
		fmt.Fprintf(w, "  -%s value, %s%s\n    \t%s\n", FlagName(s.env), s.env, def, s.usage)
	}
}

// Variables returns the names of every configuration variable.
func Variables() []string {
	var names []string
	for _, s := range settings() {
		names = append(names, s.env)
	}
	return names
}

// FlagName is the flag of an environment variable: HERALD_MAX_CONNS →
// herald-max-conns.
func FlagName(env string) string { return strings.ReplaceAll(strings.ToLower(env), "_", "-") }

func redact(env, v string) string {
	if env == "HERALD_API_KEYS" || env == "REDIS_URL" {
		return "(redacted)"
	}
	return v
}

func list(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func intSetting(field func(*Config) *int, minimum int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < minimum {
			return fmt.Errorf("want a whole number ≥ %d", minimum)
		}
		*field(c) = n
		return nil
	}
}

func rateSetting(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0) || math.IsInf(f, 0) {
			return errors.New("want a positive number")
		}
		*field(c) = f
		return nil
	}
}

func boolSetting(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		*field(c) = b
		return nil
	}
}

func durSetting(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 10s")
		}
		*field(c) = d
		return nil
	}
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", 0, errors.New("want host:port or :port")
	}
	port, err := strconv.Atoi(addr[i+1:])
	if err != nil || port < 0 || port > 65535 {
		return "", 0, errors.New("bad port")
	}
	return addr[:i], port, nil
}

// defaultMaxConns leaves headroom below the process's open-file limit for
// HTTP connections (defaultMaxHTTPConns), Redis connections, listeners and
// files: 90 % of the limit, less 64.
func defaultMaxConns() int {
	lim, ok := openFileLimit()
	if !ok {
		return 1000
	}
	return max(int(float64(lim)*0.9)-64, 16)
}

// defaultMaxHTTPConns is the other 10 % of the open-file limit, at least 16.
func defaultMaxHTTPConns() int {
	lim, ok := openFileLimit()
	if !ok {
		return 100
	}
	return max(lim/10, 16)
}

// openFileLimit returns the process's soft RLIMIT_NOFILE, if it can be read.
func openFileLimit() (int, bool) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == 0 {
		return 0, false
	}
	return int(min(lim.Cur, 1<<30)), true
}
