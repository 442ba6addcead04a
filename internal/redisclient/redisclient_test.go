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

// TestRefusedOptions: go-redis URL options that parse but break Herald
// (routing to replicas) are refused with a message naming REDIS_URL and
// the option; the same options set to false pass.
func TestRefusedOptions(t *testing.T) {
	const (
		sentinel = "redis://127.0.0.1:26379?master_name=herald&"
		cluster  = "redis://127.0.0.1:7000?addr=127.0.0.1:7001&"
	)
	tests := []struct {
		mode   redisclient.Mode
		url    string
		option string // "" when accepted
	}{
		{redisclient.Sentinel, sentinel + "route_by_latency=true", "route_by_latency"},
		{redisclient.Sentinel, sentinel + "route_randomly=true", "route_randomly"},
		{redisclient.Sentinel, sentinel + "replica_only=true", "replica_only"},
		{redisclient.Sentinel, sentinel + "route_randomly=false&replica_only=false", ""},
		{redisclient.Cluster, cluster + "read_only=true", "read_only"},
		{redisclient.Cluster, cluster + "route_by_latency=true", "route_by_latency"},
		{redisclient.Cluster, cluster + "route_randomly=true", "route_randomly"},
		{redisclient.Cluster, cluster + "read_only=false", ""},
	}
	for _, tt := range tests {
		err := redisclient.Check(tt.mode, tt.url)
		if tt.option == "" {
			if err != nil {
				t.Errorf("Check(%s, %s): %v, want accepted", tt.mode, tt.url, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "REDIS_URL") || !strings.Contains(err.Error(), tt.option) {
			t.Errorf("Check(%s, %s) = %v, want an error naming REDIS_URL and %s", tt.mode, tt.url, err, tt.option)
			continue
		}
		// New must refuse it too, not panic.
		if rdb, err := redisclient.New(tt.mode, tt.url); err == nil {
			rdb.Close()
			t.Errorf("New(%s, %s): no error", tt.mode, tt.url)
		}
	}
}

// TestSentinelCredentials parses the documented sentinel form: the user
// and password before the host are the Sentinels', the password= (and
// username=) parameters the data nodes'; sentinel_password= is refused.
func TestSentinelCredentials(t *testing.T) {
	rdb, err := redisclient.New(redisclient.Sentinel,
		"redis://sentuser:sentpw@127.0.0.1:26379?master_name=herald&addr=127.0.0.1:26380&username=datauser&password=datapw")
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	o := rdb.(*redis.Client).Options()
	if o.Username != "datauser" || o.Password != "datapw" {
		t.Errorf("data nodes' credentials %q/%q, want datauser/datapw", o.Username, o.Password)
	}
	fo, err := redis.ParseFailoverURL("redis://sentuser:sentpw@127.0.0.1:26379?master_name=herald&password=datapw")
	if err != nil {
		t.Fatal(err)
	}
	if fo.SentinelUsername != "sentuser" || fo.SentinelPassword != "sentpw" || fo.Password != "datapw" {
		t.Errorf("ParseFailoverURL: sentinels %q/%q, data %q; want sentuser/sentpw, datapw", fo.SentinelUsername, fo.SentinelPassword, fo.Password)
	}
	if err := redisclient.Check(redisclient.Sentinel, "redis://127.0.0.1:26379?master_name=herald&sentinel_password=x"); err == nil {
		t.Error("sentinel_password= accepted; go-redis has no such option")
	}
}
