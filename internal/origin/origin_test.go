package origin

import (
	"strings"
	"testing"
)

func TestParseRefusesWhatCanNeverMatch(t *testing.T) {
	tests := []struct{ entry, want string }{
		{"", "empty"},
		{"*", "every web site"},
		{"null", "never be allowed"},
		{"https://app.example.com/", `"/" is extra`},
		{"https://app.example.com/path", "no path"},
		{"app.example.com/", "no path"},
		{"https://user@app.example.com", "no path, query or user"},
		{"https://app.example.com?x=1", "no path, query or user"},
		{"wss://app.example.com", "never wss://"},
		{"ws://app.example.com", "never ws://"},
		{"ftp://app.example.com", "http:// or https://"},
		{"https://app.example.com:0", "1 to 65535"},
		{"https://app.example.com:99999", "1 to 65535"},
		{"https://app.example.com:", "1 to 65535"},
		{"app.*.com", "whole labels at the left"},
		{"app-*.example.com", "whole labels at the left"},
		{"*.*.example.com", "whole labels at the left"},
		{"https://*", "whole labels at the left"},
		{"*.", "not a host name"},
		{"[app].example.com", "after the IPv6"},
		{"app..example.com", "not a host name"},
		{"app.example.com.", "not a host name"},
		{"[::1", "unclosed"},
		{"[::1]x", "after the IPv6"},
		{"*.[::1]", "not a host name"},
		{"app?.example.com", "no path, query or user"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.entry)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", tt.entry, err, tt.want)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern string
		allowed []string
		refused []string
	}{
		{"https://app.example.com",
			[]string{"https://app.example.com", "https://APP.example.com", "https://app.example.com:443"},
			[]string{"http://app.example.com", "https://app.example.com:8443", "https://x.app.example.com", "https://app.example.com.evil.test"}},
		{"https://app.example.com:443", []string{"https://app.example.com"}, []string{"https://app.example.com:444"}},
		{"http://localhost:3000",
			[]string{"http://localhost:3000"},
			[]string{"http://localhost", "https://localhost:3000", "http://localhost:3001"}},
		{"app.example.com",
			[]string{"https://app.example.com", "http://app.example.com"},
			[]string{"https://app.example.com:8443", "https://example.com"}},
		{"app.example.com:8443",
			[]string{"https://app.example.com:8443", "http://app.example.com:8443"},
			[]string{"https://app.example.com"}},
		{"*.example.com",
			[]string{"https://a.example.com", "http://a.b.example.com"},
			[]string{"https://example.com", "https://aexample.com", "https://a.example.com:8443", "https://a.example.com.evil.test"}},
		{"https://*.example.com",
			[]string{"https://a.example.com", "https://a.b.example.com"},
			[]string{"http://a.example.com", "https://example.com"}},
		{"*.example.com:8443", []string{"https://a.example.com:8443"}, []string{"https://a.example.com"}},
		{"http://[::1]:8080", []string{"http://[::1]:8080"}, []string{"http://[::1]", "http://[::2]:8080"}},
		{"http://[::1]", []string{"http://[::1]", "http://[::1]:80"}, []string{"http://[::1]:8080", "https://[::1]"}},
		{"127.0.0.1:8080", []string{"http://127.0.0.1:8080"}, []string{"http://127.0.0.1", "http://127.0.0.2:8080"}},
	}
	for _, tt := range tests {
		p, err := Parse(tt.pattern)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.pattern, err)
		}
		for _, o := range tt.allowed {
			if !(List{p}).Allows(o, "gateway.test") {
				t.Errorf("%q refuses Origin %q, want allowed", tt.pattern, o)
			}
		}
		for _, o := range append(tt.refused, "null", "https://", "app.example.com", "https://app.example.com/") {
			if (List{p}).Allows(o, "gateway.test") {
				t.Errorf("%q allows Origin %q, want refused", tt.pattern, o)
			}
		}
	}
}

func TestEmptyListAllowsOwnHostOnly(t *testing.T) {
	tests := []struct {
		origin, host string
		want         bool
	}{
		{"", "gw.test", true}, // not a browser
		{"http://gw.test", "gw.test", true},
		{"https://GW.test:8080", "gw.test:8080", true},
		{"http://gw.test:8080", "gw.test", false},
		{"http://other.test", "gw.test", false},
		{"null", "gw.test", false},
	}
	for _, tt := range tests {
		if got := List(nil).Allows(tt.origin, tt.host); got != tt.want {
			t.Errorf("Allows(%q, host %q) = %v, want %v", tt.origin, tt.host, got, tt.want)
		}
	}
}

func TestParseList(t *testing.T) {
	l, err := ParseList(" https://app.example.com, ,*.example.org ")
	if err != nil || len(l) != 2 || l[0].String() != " https://app.example.com" || l[1].String() != "*.example.org " {
		t.Fatalf("got %v, %v", l, err)
	}
	if _, err := ParseList("app.example.com,https://x.test/"); err == nil || !strings.Contains(err.Error(), `"https://x.test/"`) {
		t.Errorf("err %v, want one naming the bad entry", err)
	}
}
