package origin

import (
	"strings"
	"testing"
)

// FuzzOrigin: no allow-list entry or Origin header panics the parsers or
// the matcher; an accepted entry keeps its text, never allows "null", and a
// full origin without "*" allows exactly itself as a browser writes it.
func FuzzOrigin(f *testing.F) {
	for _, s := range [][2]string{
		{"https://app.example.com", "https://app.example.com"},
		{"*.example.com", "https://a.b.example.com"},
		{"http://localhost:3000", "http://localhost:3000"},
		{"app.example.com:8443", "https://app.example.com:8443"},
		{"http://[::1]:8080", "http://[::1]:8080"},
		{"https://app.example.com/", "null"},
		{"*", "https://evil.test"},
		{"app.*.com", "https://app.x.com"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, entry, header string) {
		o, ok := ParseOrigin(header)
		p, err := Parse(entry)
		if err != nil {
			return
		}
		if p.String() != entry {
			t.Fatalf("Parse(%q).String() = %q", entry, p.String())
		}
		if (List{p}).Allows("null", "null") {
			t.Fatalf("%q allows null", entry)
		}
		if ok {
			p.Match(o)
		}
		if p.scheme == "" || p.wild {
			return
		}
		self := p.scheme + "://" + p.host
		if p.port != "" {
			self += ":" + p.port
		}
		if !(List{p}).Allows(self, "") || !(List{p}).Allows(strings.ToUpper(self), "") {
			t.Fatalf("%q refuses its own origin %q", entry, self)
		}
	})
}
