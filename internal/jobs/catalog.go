package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/cache"
)

// Effect is the definition of one kind of effect: what a job of that Kind
// renders and how long it takes. In a catalog file it reads
// {"kind":"blur","label":"Blur","durationMs":400,"params":{…}}.
type Effect struct {
	Kind       string          `json:"kind"`
	Label      string          `json:"label"`
	DurationMs int64           `json:"durationMs"`
	Params     json.RawMessage `json:"params,omitempty"`
}

// Duration is how long rendering the effect takes.
func (e Effect) Duration() time.Duration { return time.Duration(e.DurationMs) * time.Millisecond }

// Catalog is the set of effects workers can render, as read from its
// source.
type Catalog struct {
	Effects []Effect `json:"effects"`
	// Hash is the hex SHA-256 of the source content it was parsed from:
	// equal hashes, equal catalogs.
	Hash string `json:"hash"`
}

// Lookup returns the definition of kind.
func (c Catalog) Lookup(kind string) (Effect, bool) {
	for _, e := range c.Effects {
		if e.Kind == kind {
			return e, true
		}
	}
	return Effect{}, false
}

// MaxCatalogSize bounds the catalog source a worker reads.
const MaxCatalogSize = 1 << 20

// ParseCatalog parses a catalog source: a JSON list of effects, each with
// a non-empty kind unique in the list and a duration that is not
// negative. An empty list is refused too: it is more likely a file caught
// half-written than a catalog meant to drop every job.
func ParseCatalog(data []byte) (Catalog, error) {
	var effects []Effect
	if err := json.Unmarshal(data, &effects); err != nil {
		return Catalog{}, fmt.Errorf("parse catalog: %w", err)
	}
	if len(effects) == 0 {
		return Catalog{}, errors.New("parse catalog: no effects")
	}
	seen := make(map[string]bool, len(effects))
	for i, e := range effects {
		switch {
		case e.Kind == "":
			return Catalog{}, fmt.Errorf("parse catalog: effect %d: empty kind", i)
		case seen[e.Kind]:
			return Catalog{}, fmt.Errorf("parse catalog: effect %d: kind %q defined twice", i, e.Kind)
		case e.DurationMs < 0:
			return Catalog{}, fmt.Errorf("parse catalog: effect %q: negative durationMs %d", e.Kind, e.DurationMs)
		}
		seen[e.Kind] = true
	}
	sum := sha256.Sum256(data)
	return Catalog{Effects: effects, Hash: hex.EncodeToString(sum[:])}, nil
}

// CatalogSource is where the catalog is read from: a file, or an http(s)
// URL answering 200 with the catalog as its body.
type CatalogSource struct {
	loc    string // absolute file path, or URL
	url    *url.URL
	client *http.Client
}

// NewCatalogSource returns the source at loc: an http:// or https:// URL,
// else a file path (made absolute, so that workers started in different
// directories name one file alike). URLs are fetched with client, or with a
// 10 s timeout client when nil.
func NewCatalogSource(loc string, client *http.Client) (*CatalogSource, error) {
	if strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://") {
		u, err := url.Parse(loc)
		if err != nil || u.Host == "" {
			return nil, errors.New("catalog URL: not a valid URL") // the URL may hold credentials
		}
		if client == nil {
			client = &http.Client{Timeout: 10 * time.Second}
		}
		return &CatalogSource{loc: loc, url: u, client: client}, nil
	}
	if loc == "" {
		return nil, errors.New("catalog: empty path")
	}
	abs, err := filepath.Abs(loc)
	if err != nil {
		return nil, fmt.Errorf("catalog path %q: %w", loc, err)
	}
	return &CatalogSource{loc: abs}, nil
}

// String names the source for logs: the path, or the URL without its
// password and query.
func (s *CatalogSource) String() string {
	if s.url == nil {
		return s.loc
	}
	u := *s.url
	u.RawQuery, u.Fragment = "", ""
	return u.Redacted()
}

// id is a fixed-length name of the source for Redis keys, which must not
// carry a URL's credentials.
func (s *CatalogSource) id() string {
	sum := sha256.Sum256([]byte(s.loc))
	return hex.EncodeToString(sum[:12])
}

// Load reads and parses the catalog.
func (s *CatalogSource) Load(ctx context.Context) (Catalog, error) {
	data, err := s.read(ctx)
	if err != nil {
		return Catalog{}, fmt.Errorf("read catalog %s: %w", s, err)
	}
	c, err := ParseCatalog(data)
	if err != nil {
		return Catalog{}, fmt.Errorf("catalog %s: %w", s, err)
	}
	return c, nil
}

func (s *CatalogSource) read(ctx context.Context) ([]byte, error) {
	var r io.Reader
	if s.url == nil {
		f, err := os.Open(s.loc)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.loc, nil)
		if err != nil {
			return nil, err
		}
		resp, err := s.client.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // url.Error repeats the URL, which may hold credentials
			}
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("HTTP status %s", resp.Status)
		}
		r = resp.Body
	}
	data, err := io.ReadAll(io.LimitReader(r, MaxCatalogSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxCatalogSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxCatalogSize)
	}
	return data, nil
}

// CatalogTag is the cache tag of everything derived from the catalog.
const CatalogTag = "catalog"

// CatalogConfig holds the settings of a [CatalogCache].
type CatalogConfig struct {
	// Fresh is how long a loaded catalog is used as it is. Default 30 s.
	Fresh time.Duration
	// Stale is how long after Fresh it is still used, while one worker
	// reloads it in the background. Default 5 min.
	Stale time.Duration
	// Check is how often Watch reads the source to notice a change before
	// Fresh runs out. Default 10 s.
	Check time.Duration
	// Namespace of the cache's Redis keys. Default "herald:cache:catalog".
	Namespace string
	// Registerer receives the cache's counters. Default: not registered.
	Registerer prometheus.Registerer
	// Logger receives changes and failures. Default: discard.
	Logger *slog.Logger
}

// CatalogCache is the catalog as workers use it: read through a Redis
// cache that all workers share, so the source is read about once per Fresh
// period by one of them, whichever process asks. It is safe for concurrent
// use.
type CatalogCache struct {
	src   *CatalogSource
	cache *cache.Cache[Catalog]
	key   string
	cfg   CatalogConfig
	log   *slog.Logger

	lastCheck atomic.Int64 // unix ns of the last source check forced by an unknown kind
}

// unknownKindRecheck bounds how often a job of an unknown kind makes the
// worker read the catalog source, so a flood of bad jobs cannot hammer it.
const unknownKindRecheck = time.Second

// NewCatalogCache returns the catalog of src, cached in rdb.
func NewCatalogCache(rdb redis.UniversalClient, src *CatalogSource, cfg CatalogConfig) (*CatalogCache, error) {
	if cfg.Fresh <= 0 {
		cfg.Fresh = 30 * time.Second
	}
	if cfg.Stale <= 0 {
		cfg.Stale = 5 * time.Minute
	}
	if cfg.Check <= 0 {
		cfg.Check = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := cache.New(rdb, cfg.Registerer, cache.Config[Catalog]{
		Name:      "catalog",
		Namespace: cfg.Namespace,
		Logger:    cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &CatalogCache{src: src, cache: c, key: "src:" + src.id(), cfg: cfg, log: cfg.Logger}, nil
}

// Catalog returns the catalog: from the cache, stale for at most
// cfg.Stale while it is being refreshed, or loaded from the source on a
// miss.
func (cc *CatalogCache) Catalog(ctx context.Context) (Catalog, error) {
	return cc.cache.GetOrLoad(ctx, cc.key, cc.cfg.Fresh, cc.src.Load,
		cache.Stale(cc.cfg.Stale), cache.Tags(CatalogTag))
}

// Lookup returns the definition of kind; ok is false when the catalog has
// no such kind. An error means the catalog could not be had at all. A kind
// the cached catalog lacks may have just been added to the source: before
// answering "unknown", Lookup checks the source (at most once a second)
// and, when it changed, looks again in the new catalog.
func (cc *CatalogCache) Lookup(ctx context.Context, kind string) (e Effect, ok bool, err error) {
	c, err := cc.Catalog(ctx)
	if err != nil {
		return Effect{}, false, err
	}
	if e, ok = c.Lookup(kind); ok {
		return e, true, nil
	}
	now := time.Now().UnixNano()
	last := cc.lastCheck.Load()
	if now-last < int64(unknownKindRecheck) || !cc.lastCheck.CompareAndSwap(last, now) {
		return Effect{}, false, nil
	}
	changed, err := cc.CheckSource(ctx)
	if err != nil || !changed {
		return Effect{}, false, err
	}
	if c, err = cc.Catalog(ctx); err != nil {
		return Effect{}, false, err
	}
	e, ok = c.Lookup(kind)
	return e, ok, nil
}

// Watch reads the source every cfg.Check until ctx is done, and when its
// content differs from the cached catalog's, invalidates everything tagged
// CatalogTag, in every worker's view at once: the next lookup anywhere
// loads the new catalog. A source that cannot be read or parsed changes
// nothing (the cached catalog stays in use) and is logged.
func (cc *CatalogCache) Watch(ctx context.Context) {
	t := time.NewTicker(cc.cfg.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := cc.CheckSource(ctx); err != nil && ctx.Err() == nil {
			cc.log.Warn("catalog check failed; the cached catalog stays in use", "source", cc.src.String(), "err", err)
		}
	}
}

// CheckSource compares the source with the cached catalog once, as Watch
// does, and reports whether it invalidated the catalog.
func (cc *CatalogCache) CheckSource(ctx context.Context) (changed bool, err error) {
	current, err := cc.src.Load(ctx)
	if err != nil {
		return false, err
	}
	cached, err := cc.cache.Get(ctx, cc.key)
	if errors.Is(err, cache.ErrNotFound) {
		return false, nil // nothing cached: the next lookup loads the source
	}
	if err != nil {
		return false, err
	}
	if cached.Hash == current.Hash {
		return false, nil
	}
	n, err := cc.cache.InvalidateTags(ctx, CatalogTag)
	if err != nil {
		return false, err
	}
	cc.log.Info("catalog changed; invalidated the cached one", "source", cc.src.String(),
		"effects", len(current.Effects), "invalidated", n)
	return true, nil
}

// Close stops the cache's background refreshes.
func (cc *CatalogCache) Close() error { return cc.cache.Close() }
