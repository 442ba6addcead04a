// Package redisclient builds the go-redis client for the Redis deployment
// that HERALD_REDIS_MODE and REDIS_URL name: a single server, a Redis
// Cluster, or a primary watched by Sentinel. The URL takes go-redis's own
// forms for each mode (redis.ParseURL, redis.ParseClusterURL,
// redis.ParseFailoverURL). The gateway and the worker share it.
package redisclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Mode is how Herald reaches Redis.
type Mode string

// The modes of HERALD_REDIS_MODE.
const (
	// Single is one Redis server (or a proxy that looks like one):
	// REDIS_URL is redis://[user:password@]host:port[/db][?options].
	Single Mode = "single"
	// Cluster is a Redis Cluster: REDIS_URL names seed nodes,
	// redis://[user:password@]host:port?addr=host2:port2&addr=host3:port3.
	// Herald hash-tags every key of a channel to one slot, publishes with
	// SPUBLISH and subscribes with SSUBSCRIBE (sharded pub/sub).
	Cluster Mode = "cluster"
	// Sentinel is a primary with replicas, failed over by Sentinel:
	// REDIS_URL names the Sentinels and the master,
	// redis://[user:password@]sentinel1:port?master_name=NAME&addr=sentinel2:port&password=…
	// As go-redis's ParseFailoverURL reads it, the user and password
	// before the host are the Sentinels'; the data nodes' are the
	// username= and password= parameters. (There is no
	// sentinel_password= parameter: it is refused.)
	Sentinel Mode = "sentinel"
)

// ParseMode reads a HERALD_REDIS_MODE value; "" is Single.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return Single, nil
	case Single, Cluster, Sentinel:
		return m, nil
	}
	return "", errors.New("want single, cluster or sentinel")
}

// DefaultReplicaAcks is how many replicas must confirm a publish by
// default (HERALD_REDIS_REPLICA_ACKS): one under Sentinel and on a
// cluster, where a failover to a replica is expected and must not lose
// acknowledged events; none on a single server.
func DefaultReplicaAcks(mode Mode) int {
	if mode == Cluster || mode == Sentinel {
		return 1
	}
	return 0
}

// ShortOfReplicas returns the primaries (masters) of rdb that have fewer
// than n replicas connected, as "addr (k)": publishes that wait for n
// confirmations fail there. It asks every master of a cluster.
func ShortOfReplicas(ctx context.Context, rdb redis.UniversalClient, n int) ([]string, error) {
	var mu sync.Mutex
	var short []string
	check := func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("INFO replication: %w", err)
		}
		have := 0
		for _, line := range strings.Split(info, "\n") {
			if strings.HasPrefix(line, "slave") && strings.Contains(line, "state=online") {
				have++
			}
		}
		if have < n {
			mu.Lock()
			short = append(short, fmt.Sprintf("%s (%d)", c.Options().Addr, have))
			mu.Unlock()
		}
		return nil
	}
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, check)
	case *redis.Client:
		err = check(ctx, c)
	}
	slices.Sort(short)
	return short, err
}

// Check parses url for mode without connecting. Its errors never repeat
// the URL, which may hold a password.
func Check(mode Mode, url string) error {
	_, err := options(mode, url)
	return err
}

// New returns an unconnected client for mode and url: a *redis.Client for
// Single, a *redis.ClusterClient for Cluster, and a failover
// *redis.Client (redis.NewFailoverClient) for Sentinel. The caller closes
// it.
func New(mode Mode, url string) (redis.UniversalClient, error) {
	o, err := options(mode, url)
	if err != nil {
		return nil, err
	}
	switch o := o.(type) {
	case *redis.ClusterOptions:
		return redis.NewClusterClient(o), nil
	case *redis.FailoverOptions:
		return redis.NewFailoverClient(o), nil
	default:
		return redis.NewClient(o.(*redis.Options)), nil
	}
}

// Describe names what a URL points at, for logs: the addresses, without
// credentials.
func Describe(mode Mode, url string) string {
	switch o, _ := options(mode, url); o := o.(type) {
	case *redis.ClusterOptions:
		return "cluster " + strings.Join(o.Addrs, ",")
	case *redis.FailoverOptions:
		return "sentinel " + strings.Join(o.SentinelAddrs, ",") + " master " + o.MasterName
	case *redis.Options:
		return o.Addr
	}
	return ""
}

// options parses url for mode into go-redis's options.
//
// Unless the URL asks for a protocol (protocol=3), the client speaks
// RESP2: Herald reads no RESP3-only reply, and go-redis checks a RESP3
// connection for push notifications before every command, a read that
// cost 7 % of the gateway's CPU under publish load (docs/BENCHMARKS.md).
func options(mode Mode, url string) (any, error) {
	o, err := parse(mode, url)
	var ue *neturl.Error
	if errors.As(err, &ue) {
		// A *url.Error prints the whole URL, password included.
		return nil, fmt.Errorf("%s: malformed URL: %w", mode, ue.Err)
	}
	switch o := o.(type) {
	case *redis.Options:
		o.Protocol = cmp.Or(o.Protocol, 2)
	case *redis.ClusterOptions:
		o.Protocol = cmp.Or(o.Protocol, 2)
	case *redis.FailoverOptions:
		o.Protocol = cmp.Or(o.Protocol, 2)
	}
	return o, err
}

func parse(mode Mode, url string) (any, error) {
	switch mode {
	case Single, "":
		o, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("single: %w", err)
		}
		return o, nil
	case Cluster:
		o, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		// Reads from replicas would put SSUBSCRIBE on replicas, while
		// Herald's probe publishes to the master: every partition's
		// connection would be rebuilt at every probe.
		switch {
		case o.ReadOnly:
			return nil, refused(mode, "read_only", "sends reads and SSUBSCRIBE to replicas")
		case o.RouteByLatency:
			return nil, refused(mode, "route_by_latency", "sends reads and SSUBSCRIBE to replicas")
		case o.RouteRandomly:
			return nil, refused(mode, "route_randomly", "sends reads and SSUBSCRIBE to replicas")
		}
		return o, nil
	case Sentinel:
		o, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, fmt.Errorf("sentinel: %w", err)
		}
		if o.MasterName == "" {
			return nil, errors.New("sentinel: the URL names no master: add ?master_name=NAME")
		}
		// Herald writes to the primary and subscribes there: routing to
		// replicas breaks it (and go-redis's NewFailoverClient panics on
		// the two routing options).
		switch {
		case o.RouteByLatency:
			return nil, refused(mode, "route_by_latency", "routes commands to replicas (NewFailoverClient refuses it)")
		case o.RouteRandomly:
			return nil, refused(mode, "route_randomly", "routes commands to replicas (NewFailoverClient refuses it)")
		case o.ReplicaOnly:
			return nil, refused(mode, "replica_only", "sends every command to a replica, where writes fail")
		}
		return o, nil
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// refused is the error for a URL option Herald cannot work with.
func refused(mode Mode, option, why string) error {
	return fmt.Errorf("%s: REDIS_URL option %s is not supported: it %s; remove it", mode, option, why)
}
