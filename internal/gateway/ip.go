package gateway

import (
	"net"
	"net/netip"

	"github.com/labstack/echo/v4"
)

// ipExtractor returns how the client IP is found: the socket's peer address,
// unless that peer is a configured proxy; then X-Forwarded-For is read right
// to left, skipping trusted hops. Echo's defaults (trusting private ranges
// and loopback) are turned off: only configured CIDRs are proxies.
func ipExtractor(trusted []netip.Prefix) echo.IPExtractor {
	if len(trusted) == 0 {
		return echo.ExtractIPDirect()
	}
	opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
	for _, p := range trusted {
		opts = append(opts, echo.TrustIPRange(&net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}))
	}
	return echo.ExtractIPFromXFFHeader(opts...)
}
