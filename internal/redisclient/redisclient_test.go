package redisclient_test

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/redisclient"
)

func TestParseMode(t *testing.T) {
	for in, want := range map[string]redisclient.Mode{"": redisclient.Single, "single": redisclient.Single, " Cluster ": redisclient.Cluster, "sentinel": redisclient.Sentinel} {
		if got, err := redisclient.ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := redisclient.ParseMode("replicated"); err == nil {
		t.Error("ParseMode(replicated): no error")
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		mode redisclient.Mode
		url  string
		want string // client type, or "error"
		desc string
	}{
		{redisclient.Single, "redis://:pw@127.0.0.1:6390/2", "*redis.Client", "127.0.0.1:6390"},
		{redisclient.Cluster, "redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002", "*redis.ClusterClient", "cluster 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"},
		{redisclient.Sentinel, "redis://127.0.0.1:26379?master_name=herald&addr=127.0.0.1:26380", "*redis.Client", "sentinel 127.0.0.1:26379,127.0.0.1:26380 master herald"},
		{redisclient.Sentinel, "redis://127.0.0.1:26379", "error", ""},
		{redisclient.Cluster, "redis://127.0.0.1:7000?nonsense=1", "error", ""},
		{redisclient.Single, "redis://u:secret-pw@[::1", "error", ""},
	}
	for _, tt := range tests {
		rdb, err := redisclient.New(tt.mode, tt.url)
		if tt.want == "error" {
			if err == nil {
				t.Errorf("New(%s, %s): no error", tt.mode, tt.url)
				rdb.Close()
			} else if strings.Contains(err.Error(), "secret-pw") {
				t.Errorf("New(%s): the error shows the password: %v", tt.mode, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%s, %s): %v", tt.mode, tt.url, err)
			continue
		}
		got := ""
		switch rdb.(type) {
		case *redis.Client:
			got = "*redis.Client"
		case *redis.ClusterClient:
			got = "*redis.ClusterClient"
		}
		if got != tt.want {
			t.Errorf("New(%s, %s) is a %s, want %s", tt.mode, tt.url, got, tt.want)
		}
		if d := redisclient.Describe(tt.mode, tt.url); d != tt.desc {
			t.Errorf("Describe(%s, %s) = %q, want %q", tt.mode, tt.url, d, tt.desc)
		}
		rdb.Close()
	}
}

func TestProtocolDefaultsToRESP2(t *testing.T) {
	tests := []struct {
		mode redisclient.Mode
		url  string
		want int
	}{
		{redisclient.Single, "redis://127.0.0.1:6390", 2},
		{redisclient.Single, "redis://127.0.0.1:6390?protocol=3", 3},
		{redisclient.Cluster, "redis://127.0.0.1:7000?addr=127.0.0.1:7001", 2},
		{redisclient.Cluster, "redis://127.0.0.1:7000?protocol=3", 3},
		{redisclient.Sentinel, "redis://127.0.0.1:26379?master_name=herald", 2},
	}
	for _, tt := range tests {
		rdb, err := redisclient.New(tt.mode, tt.url)
		if err != nil {
			t.Fatalf("New(%s, %s): %v", tt.mode, tt.url, err)
		}
		var got int
		switch c := rdb.(type) {
		case *redis.Client:
			got = c.Options().Protocol
		case *redis.ClusterClient:
			got = c.Options().Protocol
		}
		if got != tt.want {
			t.Errorf("New(%s, %s) speaks RESP%d, want RESP%d", tt.mode, tt.url, got, tt.want)
		}
		rdb.Close()
	}
}
