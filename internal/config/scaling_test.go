package config

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redisclient"
)

func TestRedisMode(t *testing.T) {
	ok := []struct {
		mode, url string
		want      redisclient.Mode
	}{
		{"", "redis://127.0.0.1:6379", redisclient.Single},
		{"cluster", "redis://127.0.0.1:7000?addr=127.0.0.1:7001", redisclient.Cluster},
		{"sentinel", "redis://127.0.0.1:26379?master_name=herald&addr=127.0.0.1:26380", redisclient.Sentinel},
		{"cluster", "", redisclient.Cluster}, // no Redis at all: the mode waits for a URL
	}
	for _, tt := range ok {
		c, err := Load(nil, env(map[string]string{"HERALD_REDIS_MODE": tt.mode, "REDIS_URL": tt.url}), io.Discard)
		if err != nil || c.RedisMode != tt.want {
			t.Errorf("mode %q url %q: got %q, %v; want %q", tt.mode, tt.url, c.RedisMode, err, tt.want)
		}
	}
	bad := []struct{ mode, url string }{
		{"replicated", "redis://127.0.0.1:6379"},
		{"sentinel", "redis://:hunter2-secret@127.0.0.1:26379"},   // no master_name
		{"cluster", "redis://:hunter2-secret@127.0.0.1:7000?x=1"}, // an unknown option
	}
	for _, tt := range bad {
		_, err := Load(nil, env(map[string]string{"HERALD_REDIS_MODE": tt.mode, "REDIS_URL": tt.url}), io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), "HERALD_REDIS_MODE:") {
			t.Errorf("mode %q url %q: err %v, want one naming HERALD_REDIS_MODE", tt.mode, tt.url, err)
			continue
		}
		if tt.mode != "replicated" && !strings.Contains(err.Error(), "REDIS_URL") {
			t.Errorf("mode %q: err %v does not name REDIS_URL", tt.mode, err)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("mode %q: err %v shows the password", tt.mode, err)
		}
	}
}

func TestReplicaAcks(t *testing.T) {
	for _, tt := range []struct {
		mode, acks string
		want       int
	}{{"", "", 0}, {"cluster", "", 1}, {"sentinel", "", 1}, {"sentinel", "2", 2}, {"cluster", "0", 0}} {
		c, err := Load(nil, env(map[string]string{"HERALD_REDIS_MODE": tt.mode, "HERALD_REDIS_REPLICA_ACKS": tt.acks}), io.Discard)
		if err != nil || c.ReplicaAcks != tt.want || c.ReplicaTimeout != time.Second {
			t.Errorf("mode %q acks %q: got %d, %v, %v; want %d and 1s", tt.mode, tt.acks, c.ReplicaAcks, c.ReplicaTimeout, err, tt.want)
		}
	}
	for _, bad := range []map[string]string{{"HERALD_REDIS_REPLICA_ACKS": "-1"}, {"HERALD_REDIS_REPLICA_TIMEOUT": "0s"}, {"HERALD_SESSION_CHECK_RATE": "0"}} {
		_, err := Load(nil, env(bad), io.Discard)
		for k := range bad {
			if err == nil || !strings.HasPrefix(err.Error(), k+":") {
				t.Errorf("%v: err %v, want one naming %s", bad, err, k)
			}
		}
	}
}
