package config

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != ":8080" || c.SessionCookie != "sid" || c.ConnectLimit != 30 || c.ConnectWindow != 10*time.Second ||
		c.MaxConnsPerUser != 20 || c.ClientMsgRate != 10 || c.ClientMsgBurst != 20 || c.HistorySize != 100 ||
		c.HistoryTTL != 10*time.Minute || c.DrainTimeout != 10*time.Second || !c.Dev || c.MaxConns <= 0 ||
		c.PublishLease != 100*time.Millisecond {
		t.Errorf("defaults: %+v", c)
	}
	c, err = Load(nil, env(map[string]string{"REDIS_URL": "redis://127.0.0.1:1"}), io.Discard)
	if err != nil || c.Dev {
		t.Errorf("with REDIS_URL: dev %v, err %v; want dev off", c.Dev, err)
	}
}

func TestFlagBeatsEnv(t *testing.T) {
	c, err := Load([]string{"-herald-addr", "127.0.0.1:9", "-herald-dev=false"},
		env(map[string]string{"HERALD_ADDR": ":1"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9" || c.Dev {
		t.Errorf("got addr %q dev %v", c.Addr, c.Dev)
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	tests := []struct{ env, value string }{
		{"REDIS_URL", "http://x"},
		{"HERALD_ADDR", "nowhere"},
		{"HERALD_API_KEYS", "short"},
		{"HERALD_ALLOWED_ORIGINS", "[bad"},
		{"HERALD_TRUSTED_PROXIES", "10.0.0.0/99"},
		{"HERALD_SESSION_COOKIE", "a b"},
		{"HERALD_CONNECT_LIMIT", "0"},
		{"HERALD_CONNECT_WINDOW", "soon"},
		{"HERALD_CONNECT_WINDOW", "500us"},
		{"HERALD_MAX_CONNS", "-1"},
		{"HERALD_MAX_CONNS_PER_USER", "x"},
		{"HERALD_CLIENT_MSG_RATE", "-2"},
		{"HERALD_CLIENT_MSG_BURST", "1.5"},
		{"HERALD_HISTORY_SIZE", "0"},
		{"HERALD_HISTORY_TTL", "0s"},
		{"HERALD_DRAIN_TIMEOUT", "forever"},
		{"HERALD_DEV", "maybe"},
		{"HERALD_SESSION_CHECK", "-1s"},
		{"HERALD_LOG_LEVEL", "loud"},
		{"HERALD_DEBUG_ADDR", "0.0.0.0:6060"},
		{"HERALD_DEBUG_ADDR", ":6060"},
		{"HERALD_ALLOWED_ORIGINS", "https://app.example.com/"},
		{"HERALD_ALLOWED_ORIGINS", "app.example.com,*"},
		{"HERALD_DEV_FORCE", "yes please"},
		{"HERALD_BODY_TIMEOUT", "0s"},
		{"HERALD_MAX_HTTP_CONNS", "0"},
		{"HERALD_CLIENT_FRAME_RATE", "0"},
		{"HERALD_CLIENT_FRAME_BURST", "0"},
		{"HERALD_CLIENT_BYTE_RATE", "-5"},
		{"HERALD_CLIENT_BYTE_BURST", "4096"},
		{"HERALD_PUBLISH_LEASE", "1s"},
		{"HERALD_PUBLISH_LEASE", "-1ms"},
	}
	for _, tt := range tests {
		_, err := Load(nil, env(map[string]string{tt.env: tt.value}), io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), tt.env+":") {
			t.Errorf("%s=%q: err %v, want one naming %s", tt.env, tt.value, err, tt.env)
		}
	}
}

func TestSecretsNotEchoed(t *testing.T) {
	_, err := Load(nil, env(map[string]string{"HERALD_API_KEYS": "tiny-secret"}), io.Discard)
	if err == nil || strings.Contains(err.Error(), "tiny-secret") {
		t.Errorf("error %v echoes the key", err)
	}
}

func TestTrustedProxies(t *testing.T) {
	c, err := Load(nil, env(map[string]string{"HERALD_TRUSTED_PROXIES": "10.1.2.3/8, 127.0.0.1"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.TrustedProxies) != 2 || c.TrustedProxies[0].String() != "10.0.0.0/8" || c.TrustedProxies[1].String() != "127.0.0.1/32" {
		t.Errorf("got %v", c.TrustedProxies)
	}
}

// -h lists every flag with its variable and default, never the values the
// environment holds, and is not an error the caller reports.
func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		var out strings.Builder
		_, err := Load([]string{arg}, env(map[string]string{"HERALD_API_KEYS": "a-secret-key-0123456789"}), &out)
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%s: got %v, want flag.ErrHelp", arg, err)
		}
		text := out.String()
		for _, name := range Variables() {
			if !strings.Contains(text, "-"+FlagName(name)+" value, "+name) {
				t.Errorf("%s: %s is not listed:\n%s", arg, name, text)
			}
		}
		for _, want := range []string{"HERALD_ADDR (default :8080)", "HERALD_HISTORY_TTL (default 10m)", "HERALD_SESSION_COOKIE (default sid)"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: no %q in:\n%s", arg, want, text)
			}
		}
		if strings.Contains(text, "a-secret-key") || strings.Contains(text, " string") {
			t.Errorf("%s: shows an environment value or a bare type:\n%s", arg, text)
		}
	}
}

// TestDevWithSharedRedisNeedsForce: HERALD_DEV with REDIS_URL would let
// anyone log in as anyone on every replica sharing that Redis; it refuses
// to start unless HERALD_DEV_FORCE says so.
func TestDevWithSharedRedisNeedsForce(t *testing.T) {
	tests := []struct {
		env     map[string]string
		wantErr bool
		wantDev bool
	}{
		{map[string]string{}, false, true},
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:1"}, false, false},
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:1", "HERALD_DEV": "true"}, true, false},
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:1", "HERALD_DEV": "true", "HERALD_DEV_FORCE": "true"}, false, true},
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:1", "HERALD_DEV_FORCE": "true"}, false, false},
	}
	for _, tt := range tests {
		c, err := Load(nil, env(tt.env), io.Discard)
		if tt.wantErr {
			if err == nil || !strings.HasPrefix(err.Error(), "HERALD_DEV:") || !strings.Contains(err.Error(), "HERALD_DEV_FORCE") {
				t.Errorf("%v: err %v, want one naming HERALD_DEV and HERALD_DEV_FORCE", tt.env, err)
			}
			continue
		}
		if err != nil || c.Dev != tt.wantDev {
			t.Errorf("%v: dev %v, err %v; want dev %v", tt.env, c.Dev, err, tt.wantDev)
		}
	}
}

func TestHardeningDefaults(t *testing.T) {
	c, err := Load(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.BodyTimeout != 10*time.Second || c.MaxHTTPConns < 16 || c.ClientFrameRate != 50 || c.ClientFrameBurst != 100 ||
		c.ClientByteRate != 64<<10 || c.ClientByteBurst != 256<<10 || c.DevForce {
		t.Errorf("defaults: %+v", c)
	}
}
