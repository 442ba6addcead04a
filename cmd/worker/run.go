package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
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
	prefix      string
	historySize int64
	historyTTL  time.Duration
}

// addRedisFlags registers the Redis flags on fs. Environment values are
// applied by resolve after parsing, not shown as flag defaults: -h would
// print a REDIS_URL's password.
func addRedisFlags(fs *flag.FlagSet) *redisFlags {
	rf := &redisFlags{}
	fs.StringVar(&rf.url, "redis-url", "", "Redis URL, redis:// or rediss:// (env REDIS_URL)")
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

// client connects to Redis and checks that it answers. The caller closes it.
func (rf *redisFlags) client(ctx context.Context) (*redis.Client, error) {
	if rf.url == "" {
		return nil, errors.New("no Redis: set REDIS_URL (or --redis-url)")
	}
	opts, err := redis.ParseURL(rf.url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err) // the error does not repeat the URL, which may hold a password
	}
	rdb := redis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
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
	fs.StringVar(&pf.gateway, "gateway", "", "publish through this gateway's HTTP API (base URL) instead of Redis")
	fs.StringVar(&pf.apiKey, "api-key", "", "API key for --gateway; prefer env HERALD_API_KEY, which stays out of the process list")
	return pf
}

// publisher returns the publisher the flags ask for: HTTP with --gateway,
// else Redis through rdb, which must then be set. via names the choice.
func publisher(rf *redisFlags, pf *publishFlags, getenv func(string) string, rdb *redis.Client) (p herald.Publisher, via string, err error) {
	if pf.gateway == "" {
		return herald.NewRedisPublisher(rdb, herald.RedisConfig{
			HistorySize: rf.historySize,
			HistoryTTL:  rf.historyTTL,
			KeyPrefix:   rf.prefix,
		}), "redis", nil
	}
	key := pf.apiKey
	if key == "" {
		key = getenv("HERALD_API_KEY")
	}
	if key == "" {
		return nil, "", errors.New("--gateway needs an API key: set HERALD_API_KEY (or --api-key)")
	}
	hp, err := herald.NewHTTPPublisher(pf.gateway, key, herald.HTTPConfig{})
	if err != nil {
		return nil, "", err
	}
	return hp, "gateway", nil
}

func newLogger(stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, nil))
}
