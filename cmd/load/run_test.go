package main

import "testing"

func TestParseRefusesNonLoopbackTargets(t *testing.T) {
	env := func(k string) string {
		if k == "HERALD_API_KEY" {
			return "k"
		}
		return ""
	}
	tests := []struct {
		gateways string
		ok       bool
	}{
		{"http://127.0.0.1:8080", true},
		{"http://localhost:8080,http://127.0.0.2:9", true},
		{"http://[::1]:8080", true},
		{"http://10.0.0.5:8080", false},
		{"http://example.com", false},
		{"http://127.0.0.1:8080,http://192.168.1.2:8080", false},
	}
	for _, tt := range tests {
		_, err := parse([]string{"-gateways", tt.gateways}, env)
		if (err == nil) != tt.ok {
			t.Errorf("-gateways %s: err %v, want ok %v", tt.gateways, err, tt.ok)
		}
	}
	if _, err := parse(nil, func(string) string { return "" }); err == nil {
		t.Error("no API key: want an error")
	}
}
