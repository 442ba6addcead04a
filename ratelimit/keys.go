package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"net"

	"github.com/labstack/echo/v4"
)

// HashKey returns a stable, fixed-length stand-in for a secret identifier
// such as an API key or a session id: 32 hex digits of its SHA-256. Use it
// before the identifier becomes part of a Redis key, which any operator
// (or a KEYS/SCAN, a MONITOR, a dump) can read.
func HashKey(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:16])
}

// Hashed wraps a key function so that the limiter (and Redis) only ever see
// HashKey of what key returns.
func Hashed(key func(echo.Context) string) func(echo.Context) string {
	return func(c echo.Context) string { return HashKey(key(c)) }
}

// ClientIP is a key function: the client's IP address as the app's
// echo.IPExtractor finds it, or, when the app set none, the address of the
// peer socket. Unlike echo's Context.RealIP it never believes
// X-Forwarded-For or X-Real-IP by default: those headers are the client's
// to forge. Behind a proxy, set e.IPExtractor to trust exactly that proxy.
func ClientIP(c echo.Context) string {
	if c.Echo().IPExtractor != nil {
		return c.RealIP()
	}
	host, _, err := net.SplitHostPort(c.Request().RemoteAddr)
	if err != nil {
		return c.Request().RemoteAddr
	}
	return host
}
