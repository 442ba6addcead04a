// Package origin reads the allowed-origin list operators write
// (HERALD_ALLOWED_ORIGINS) and matches the Origin header browsers send
// against it.
//
// An entry is either a full origin or a host pattern:
//
//	https://app.example.com      scheme, host and port (443) must all match
//	http://localhost:3000        the same, port 3000
//	https://*.example.com        any subdomain, https on port 443
//	app.example.com              any scheme, on that scheme's default port
//	*.example.com:8443           any subdomain, any scheme, port 8443
//
// A "*" stands for one or more whole labels at the left of a host:
// *.example.com matches a.example.com and a.b.example.com, never
// example.com itself. Hosts compare without regard to case. An entry that
// no browser's Origin could ever match (a path, a query, user info, a
// WebSocket scheme, "*" inside a label, "null") is refused by Parse, so a
// typo stops the gateway at start instead of locking every browser out.
package origin

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Pattern is one parsed entry of the allow-list.
type Pattern struct {
	raw    string
	scheme string // "http" or "https"; "" for a host pattern (any scheme)
	host   string // lower case; for a wildcard, the part after "*."
	wild   bool   // a "*." prefix: one or more labels before host
	port   string // explicit port; "" for the scheme's default
}

// String returns the entry as the operator wrote it.
func (p Pattern) String() string { return p.raw }

// Parse reads one entry of the allow-list. Its errors say why the entry
// can never match a browser's Origin, and how to write it instead.
func Parse(s string) (Pattern, error) {
	p := Pattern{raw: s}
	rest := strings.ToLower(strings.TrimSpace(s))
	switch rest {
	case "":
		return Pattern{}, errors.New("empty origin")
	case "*":
		return Pattern{}, errors.New(`"*" would let every web site use your users' cookies; list the origins (a "*." prefix allows subdomains)`)
	case "null":
		return Pattern{}, errors.New(`"null" is the Origin of sandboxed and file: pages; it can never be allowed`)
	}
	if scheme, after, ok := strings.Cut(rest, "://"); ok {
		switch scheme {
		case "http", "https":
		case "ws", "wss":
			return Pattern{}, fmt.Errorf("%q: browsers send the page's origin (http:// or https://), never %s://", s, scheme)
		default:
			return Pattern{}, fmt.Errorf("%q: want an http:// or https:// origin", s)
		}
		p.scheme, rest = scheme, after
	}
	if i := strings.IndexAny(rest, "/?#@"); i >= 0 {
		return Pattern{}, fmt.Errorf("%q: an origin is scheme://host[:port], with no path, query or user (%q is extra)", s, rest[i:])
	}
	host, port, err := splitHostPort(rest)
	if err != nil {
		return Pattern{}, fmt.Errorf("%q: %w", s, err)
	}
	if port == defaultPort(p.scheme) {
		port = ""
	}
	p.port = port
	if after, ok := strings.CutPrefix(host, "*."); ok {
		p.wild, host = true, after
	}
	if strings.Contains(host, "*") {
		return Pattern{}, fmt.Errorf(`%q: "*" stands only for whole labels at the left, as in *.example.com`, s)
	}
	if !validHost(host) || (p.wild && strings.HasPrefix(host, "[")) {
		return Pattern{}, fmt.Errorf("%q: %q is not a host name or IP address", s, host)
	}
	p.host = host
	return p, nil
}

// Origin is a parsed Origin header: lower-case scheme and host, and the
// port, explicit or the scheme's default ("" when the scheme has none).
type Origin struct {
	Scheme, Host, Port string
}

// ParseOrigin reads an Origin header as browsers write it,
// scheme://host[:port]. It reports false for "null" and anything else that
// is not such an origin.
func ParseOrigin(h string) (Origin, bool) {
	scheme, rest, ok := strings.Cut(strings.ToLower(h), "://")
	if !ok || scheme == "" || strings.ContainsAny(rest, "/?#@") {
		return Origin{}, false
	}
	host, port, err := splitHostPort(rest)
	if err != nil || !validHost(host) {
		return Origin{}, false
	}
	if port == "" {
		port = defaultPort(scheme)
	}
	return Origin{Scheme: scheme, Host: host, Port: port}, true
}

// Match reports whether o is allowed by p.
func (p Pattern) Match(o Origin) bool {
	if p.scheme != "" && p.scheme != o.Scheme {
		return false
	}
	if p.wild {
		prefix, ok := strings.CutSuffix(o.Host, "."+p.host)
		if !ok || prefix == "" {
			return false
		}
	} else if o.Host != p.host {
		return false
	}
	want := p.port
	if want == "" {
		// A full origin means its scheme's default port; a host pattern
		// the default port of whichever scheme the page uses.
		want = defaultPort(o.Scheme)
	}
	return o.Port == want
}

// List is a parsed allow-list.
type List []Pattern

// ParseList reads a comma-separated allow-list; blank entries are skipped.
// The error names the first entry that can never match.
func ParseList(s string) (List, error) {
	var l List
	for _, e := range strings.Split(s, ",") {
		if strings.TrimSpace(e) == "" {
			continue
		}
		p, err := Parse(e)
		if err != nil {
			return nil, err
		}
		l = append(l, p)
	}
	return l, nil
}

// Allows reports whether a request with the Origin header h, sent to the
// Host host, may go on. A request without Origin (not a browser, or a
// same-origin GET) may. "null" and malformed origins may not. An empty list
// allows only the gateway's own host: the Origin's host[:port] must equal
// host.
func (l List) Allows(h, host string) bool {
	if h == "" {
		return true
	}
	o, ok := ParseOrigin(h)
	if !ok {
		return false
	}
	if len(l) == 0 {
		_, rest, _ := strings.Cut(strings.ToLower(h), "://")
		return rest == strings.ToLower(host)
	}
	for _, p := range l {
		if p.Match(o) {
			return true
		}
	}
	return false
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http":
		return "80"
	case "https":
		return "443"
	}
	return ""
}

// splitHostPort splits host[:port] or [v6][:port]; the port, when present,
// must be 1 to 65535.
func splitHostPort(s string) (host, port string, err error) {
	host = s
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("unclosed [ in an IPv6 address")
		}
		host, port = s[:end+1], s[end+1:]
		if port == "" {
			return host, "", nil
		}
		p, ok := strings.CutPrefix(port, ":")
		if !ok {
			return "", "", fmt.Errorf("%q after the IPv6 address", port)
		}
		port = p
	} else if strings.ContainsAny(s, "[]") {
		return "", "", fmt.Errorf("%q is not a host name or IP address", s)
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
	} else {
		return host, "", nil
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' {
		return "", "", fmt.Errorf("port %q is not 1 to 65535", port)
	}
	return host, port, nil
}

// validHost accepts a DNS name (letters, digits, hyphens and underscores in
// non-empty labels), an IPv4 address or a bracketed IPv6 address.
func validHost(h string) bool {
	if v6, ok := strings.CutPrefix(h, "["); ok {
		a, err := netip.ParseAddr(strings.TrimSuffix(v6, "]"))
		return err == nil && a.Is6() && strings.HasSuffix(v6, "]")
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
