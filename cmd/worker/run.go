package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redisclient"
)

const usage = `usage: worker COMMAND [flags]

commands:
  publish  publish one effect-complete event
  run      consume jobs from the job stream, process them, announce the results
  demo     enqueue synthetic jobs

Run "worker COMMAND -h" for the flags of a command.
`

// errUsage marks errors in the command line; main exits with 2 on them.
var errUsage = errors.New("usage")

// errHelp is returned by parse when -h was given; run then returns nil.
var errHelp = errors.New("help requested")

// run is the whole program; main only adds signals and the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("%w: no command", errUsage)
	}
	var err error
	switch args[0] {
	case "publish":
		err = runPublish(ctx, args[1:], getenv, stdout, stderr)
	case "run":
		err = runWorker(ctx, args[1:], getenv, stdout, stderr)
	case "demo":
		err = runDemo(ctx, args[1:], getenv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprint(stderr, usage)
		err = fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

// parse parses a command's flags; it refuses positional arguments.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, fs.Name(), fs.Arg(0))
	}
	return nil
}

// redisFlags locate Herald's Redis and describe its history window, which
// a worker publishing through Redis must share with the gateway.
type redisFlags struct {
	url         string
	mode        string
	replicaAcks int // -1: the mode's default
	prefix      string
	historySize int64
	historyTTL  time.Duration
}

// addRedisFlags registers the Redis flags on fs. Environment values are
// applied by resolve after parsing, not shown as flag defaults: -h would
// print a REDIS_URL's password.
func addRedisFlags(fs *flag.FlagSet) *redisFlags {
	rf := &redisFlags{}
	fs.StringVar(&rf.url, "redis-url", "", "Redis URL, redis:// or rediss://, in the form --redis-mode reads (env REDIS_URL)")
	fs.StringVar(&rf.mode, "redis-mode", "", "single, cluster or sentinel, as configured on the gateway (env HERALD_REDIS_MODE, default single)")
	fs.IntVar(&rf.replicaAcks, "replica-acks", -1, "replicas that must have an event before its publish succeeds, as on the gateway (env HERALD_REDIS_REPLICA_ACKS, default 1 in cluster and sentinel modes, else 0)")
	fs.StringVar(&rf.prefix, "key-prefix", "", "prefix of Herald's own Redis keys, as configured on the gateway")
	fs.Int64Var(&rf.historySize, "history-size", 0, "events kept per channel; must match the gateway (env HERALD_HISTORY_SIZE, default 100)")
	fs.DurationVar(&rf.historyTTL, "history-ttl", 0, "how long events are kept per channel; must match the gateway (env HERALD_HISTORY_TTL, default 10m)")
	return rf
}

// resolve fills what the flags left unset from the environment. A bad
// environment value is an error naming the variable.
func (rf *redisFlags) resolve(getenv func(string) string) error {
	if rf.url == "" {
		rf.url = getenv("REDIS_URL")
	}
	if rf.mode == "" {
		rf.mode = getenv("HERALD_REDIS_MODE")
	}
	mode, err := redisclient.ParseMode(rf.mode)
	if err != nil {
		return fmt.Errorf("HERALD_REDIS_MODE=%q: %w", rf.mode, err)
	}
	if v := getenv("HERALD_REDIS_REPLICA_ACKS"); rf.replicaAcks < 0 && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("HERALD_REDIS_REPLICA_ACKS=%q: want a whole number ≥ 0", v)
		}
		rf.replicaAcks = n
	}
	if rf.replicaAcks < 0 {
		rf.replicaAcks = redisclient.DefaultReplicaAcks(mode)
	}
	if v := getenv("HERALD_HISTORY_SIZE"); rf.historySize == 0 && v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("HERALD_HISTORY_SIZE=%q: want a positive integer", v)
		}
		rf.historySize = n
	}
	if v := getenv("HERALD_HISTORY_TTL"); rf.historyTTL == 0 && v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("HERALD_HISTORY_TTL=%q: want a positive duration such as 10m", v)
		}
		rf.historyTTL = d
	}
	if rf.historySize < 0 || rf.historyTTL < 0 {
		return fmt.Errorf("%w: --history-size and --history-ttl must not be negative", errUsage)
	}
	return nil
}

func (rf *redisFlags) names() events.Names { return events.Names{Prefix: rf.prefix} }

// client connects to Redis in the mode resolve checked, and checks that it
// answers. The caller closes it.
func (rf *redisFlags) client(ctx context.Context) (redis.UniversalClient, error) {
	if rf.url == "" {
		return nil, errors.New("no Redis: set REDIS_URL (or --redis-url)")
	}
	mode, _ := redisclient.ParseMode(rf.mode)
	rdb, err := redisclient.New(mode, rf.url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err) // the error does not repeat the URL, which may hold a password
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis at %s: %w", redisclient.Describe(mode, rf.url), err)
	}
	return rdb, nil
}

// publishFlags choose how results are announced: through Redis, or
// through a gateway's HTTP API.
type publishFlags struct {
	gateway string
	apiKey  string
}

func addPublishFlags(fs *flag.FlagSet) *publishFlags {
	pf := &publishFlags{}
	fs.StringVar(&pf.gateway, "gateway", "", "publish through this gateway's HTTP API instead of Redis: its address, http://host:port or host:port")
	fs.StringVar(&pf.apiKey, "api-key", "", "API key for --gateway; prefer env HERALD_API_KEY (or the gateway's HERALD_API_KEYS, whose first key is used), which stays out of the process list")
	return pf
}

// gatewayURL turns --gateway into the gateway's base URL: an address
// without a scheme ("localhost:8080") is taken as http.
func gatewayURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("%w: --gateway %q: want the gateway's address, such as http://localhost:8080 or localhost:8080", errUsage, s)
	}
	return u.Scheme + "://" + u.Host, nil
}

// key is the API key for --gateway: --api-key, else HERALD_API_KEY, else
// the first key of HERALD_API_KEYS, so that the variable set for the
// gateway works for the worker too.
func (pf *publishFlags) key(getenv func(string) string) string {
	if pf.apiKey != "" {
		return pf.apiKey
	}
	if k := strings.TrimSpace(getenv("HERALD_API_KEY")); k != "" {
		return k
	}
	first, _, _ := strings.Cut(getenv("HERALD_API_KEYS"), ",")
	return strings.TrimSpace(first)
}

// publisher returns the publisher the flags ask for: HTTP with --gateway,
// else Redis through rdb, which must then be set. via names the choice.
func publisher(rf *redisFlags, pf *publishFlags, getenv func(string) string, rdb redis.UniversalClient) (p herald.Publisher, via string, err error) {
	if pf.gateway == "" {
		return herald.NewRedisPublisher(rdb, herald.RedisConfig{
			HistorySize: rf.historySize,
			HistoryTTL:  rf.historyTTL,
			KeyPrefix:   rf.prefix,
			ReplicaAcks: rf.replicaAcks,
		}), "redis", nil
	}
	base, err := gatewayURL(pf.gateway)
	if err != nil {
		return nil, "", err
	}
	key := pf.key(getenv)
	if key == "" {
		return nil, "", errors.New("--gateway needs an API key: set HERALD_API_KEY or HERALD_API_KEYS (or --api-key)")
	}
	hp, err := herald.NewHTTPPublisher(base, key, herald.HTTPConfig{})
	if err != nil {
		return nil, "", err
	}
	return hp, "gateway", nil
}

func newLogger(stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, nil))
}
