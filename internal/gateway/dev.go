package gateway

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/session"
)

// Dev endpoints (HERALD_DEV): log in as anyone and run fake jobs, for the
// demo page. Never enabled with a shared Redis unless asked.

const devSessionTTL = 12 * time.Hour

// sameSite refuses (403) a dev request that a browser sent from an origin
// the allow-list does not name, as /ws does: a page elsewhere must not log
// its visitors in as someone, or start jobs for them. Together with JSON
// bodies (requireJSON: forms and text/plain are 415), no cross-site page
// can use the dev endpoints.
func (s *Server) sameSite(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !s.originAllowed(c.Request()) {
			return writeError(c, errForbiddenOrigin)
		}
		return next(c)
	}
}

// handleDevLogin is POST /dev/login {"userId"} (JSON only): it creates a
// session and sets the session cookie.
func (s *Server) handleDevLogin(c echo.Context) error {
	var body struct {
		UserID string `json:"userId"`
	}
	if err := decodeBody(c, maxSmallBody, &body); err != nil {
		return err
	}
	if !events.ValidName(body.UserID) {
		return errBadRequest("userId", "userId must match [A-Za-z0-9:_.-]{1,128}")
	}
	sess, err := s.sessions.Create(c.Request().Context(), body.UserID, body.UserID+"@demo.invalid", "dev", devSessionTTL)
	if err != nil {
		return errUnavailable(err)
	}
	c.SetCookie(&http.Cookie{
		Name: s.cfg.SessionCookie, Value: sess.ID, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: c.IsTLS(), Expires: time.UnixMilli(sess.ExpiresAt),
	})
	return c.JSON(http.StatusOK, map[string]any{"userId": sess.UserID, "expiresAt": sess.ExpiresAt, "memory": s.cfg.RedisURL == ""})
}

// handleDevSession is GET /dev/session: whose session the cookie holds,
// {"userId":"…"} or {"userId":null}, and whether sessions live in this
// process's memory ("memory": true, without REDIS_URL), so that they end
// when it restarts. It answers 200 either way: the demo page asks on every
// load, and a page without a session is not an error to log in its console.
func (s *Server) handleDevSession(c echo.Context) error {
	out := map[string]any{"userId": nil, "memory": s.cfg.RedisURL == ""}
	if ck, err := c.Cookie(s.cfg.SessionCookie); err == nil && ck.Value != "" {
		sess, err := s.sessions.Get(c.Request().Context(), ck.Value)
		switch {
		case err == nil:
			out["userId"] = sess.UserID
		case !errors.Is(err, session.ErrNotFound) && !errors.Is(err, session.ErrExpired):
			return errUnavailable(err)
		}
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, out)
}

// handleDevLogout is POST /dev/logout: it revokes the cookie's session.
func (s *Server) handleDevLogout(c echo.Context) error {
	if ck, err := c.Cookie(s.cfg.SessionCookie); err == nil && ck.Value != "" {
		_ = s.sessions.Revoke(c.Request().Context(), ck.Value)
	}
	c.SetCookie(&http.Cookie{Name: s.cfg.SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true})
	return c.NoContent(http.StatusNoContent)
}

// handleDevJob is POST /dev/jobs {"kind"}: it starts a fake job for the
// logged-in user and, after a short while, publishes its completion on
// user:{id} and effect:{id}, as a worker would.
func (s *Server) handleDevJob(c echo.Context) error {
	var body struct {
		Kind string `json:"kind"`
	}
	if err := decodeBody(c, maxSmallBody, &body); err != nil {
		return err
	}
	if body.Kind == "" {
		body.Kind = "blur"
	}
	if !events.ValidName(body.Kind) {
		return errBadRequest("kind", "kind must match [A-Za-z0-9:_.-]{1,128}")
	}
	ck, err := c.Cookie(s.cfg.SessionCookie)
	if err != nil {
		return errUnauthorized
	}
	sess, err := s.sessions.Get(c.Request().Context(), ck.Value)
	if err != nil {
		return err
	}
	effectID := uuid.NewString()
	if err := s.broker.SetOwner(c.Request().Context(), effectID, sess.UserID, ownerTTL); err != nil {
		return errUnavailable(err)
	}
	delay := 500*time.Millisecond + rand.N(1500*time.Millisecond)
	s.wg.Add(1)
	go s.completeDevJob(sess.UserID, effectID, body.Kind, delay)
	return c.JSON(http.StatusAccepted, map[string]any{"userEffectId": effectID, "kind": body.Kind, "etaMs": delay.Milliseconds()})
}

func (s *Server) completeDevJob(user, effectID, kind string, delay time.Duration) {
	defer s.wg.Done()
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return
	case <-t.C:
	}
	data, _ := json.Marshal(map[string]any{
		"userEffectId": effectID, "userId": user, "kind": kind,
		"resultUrl": "/dev/results/" + effectID + ".svg",
		"timestamp": s.now().UnixMilli(),
	})
	pubs := []events.Publication{
		{Channel: events.UserChannel(user), Event: events.EffectComplete, Data: data},
		{Channel: events.EffectChannel(effectID), Event: events.EffectComplete, Data: data},
	}
	if _, err := s.broker.Publish(s.ctx, "", pubs...); err != nil {
		s.log.Warn("dev job completion not published", "err", err)
		return
	}
	s.metrics.EventsIn.WithLabelValues("dev").Add(2)
}

// handleDevResult is GET /dev/results/{id}.svg: a small picture standing in
// for a job's result, its colour derived from the id.
func (s *Server) handleDevResult(c echo.Context) error {
	id := strings.TrimSuffix(c.Param("file"), ".svg")
	if _, err := uuid.Parse(id); err != nil {
		return writeError(c, errNotFound)
	}
	sum := sha256.Sum256([]byte(id))
	hue := int(sum[0]) * 360 / 256
	svg := fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200" viewBox="0 0 320 200">`+
		`<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="hsl(%d,70%%,60%%)"/>`+
		`<stop offset="1" stop-color="hsl(%d,70%%,35%%)"/></linearGradient></defs>`+
		`<rect width="320" height="200" fill="url(#g)"/><circle cx="%d" cy="%d" r="%d" fill="rgba(255,255,255,.25)"/></svg>`,
		hue, (hue+60)%360, 60+int(sum[1])%200, 40+int(sum[2])%120, 20+int(sum[3])%50)
	c.Response().Header().Set("Cache-Control", "public, max-age=86400")
	return c.Blob(http.StatusOK, "image/svg+xml", []byte(svg))
}
