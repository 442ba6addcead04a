package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/batch"
)

// A channel lives in Redis as two keys of one hash slot (see Names):
//
//   - its history, a list of "{id} {event} {data}" entries, newest first,
//     at most the history size long, none older than the history TTL (the
//     key itself expires one TTL after the last publish);
//   - its record, a hash that outlives the history (the record TTL, 24 h
//     by default): "t" the newest event id ever assigned (and, after a
//     space, when the keys' TTLs are refreshed next), "l" the newest id
//     known to be gone from the history, "o" an effect's owner, and "c"
//     while events of the channel wait in the outbox for replicas: the
//     newest id that readers may see (see publishScript).
//
// Event ids are "{ms}-{seq}" with ms from Redis's clock, increasing per
// channel like a stream's. A channel whose record is new starts at seq 1,
// so that a baseline "{ms}-0" read while it had no record (see
// RedisLog.Baselines) comes before its first event. The record keeps what
// a resume needs to be exact without keeping events: a client whose since
// is at or after "t" missed nothing, even once the history expired.

// idLua holds the Lua helpers the scripts share: ids and their order.
// An id's ms part has 13 digits until the year 2286, so ids of one
// channel compare as (ms string, seq number).
const idLua = `
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1), tonumber(string.sub(id, dash + 1))
end
local function idms(id) return tonumber((split(id))) end
local function before(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if #am ~= #bm then return #am < #bm end
  return am < bm or (am == bm and as < bs)
end
local function nowms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%.0f', n) end
-- agetrim drops history entries older than minms from the tail and returns
-- the id of the newest one it dropped, or nil.
local function agetrim(hist, minms)
  local gone
  while true do
    local tail = redis.call('LINDEX', hist, -1)
    if not tail then break end
    local id = string.match(tail, '^(%S+)')
    if idms(id) >= minms then break end
    redis.call('RPOP', hist)
    gone = id
  end
  return gone
end
`

// historyScript reads a channel's history after an event id and says
// whether it is complete: whether no event after that id is gone. It
// trims by age first, so the answer holds at the moment of the read.
//
//   - With no record, nothing was published for a record TTL: complete
//     when since is younger than that.
//   - since at or after the newest id ("t"; while events wait for
//     replicas, the confirmed mark "c": later ones are left out, they
//     arrive live once confirmed): nothing was published after it,
//     complete.
//   - Otherwise events after since exist: complete when the history holds
//     them all, i.e. it is not empty and no id after since left it ("l").
//
// KEYS[1] history, KEYS[2] record
// ARGV[1] since; ARGV[2] history ttl ms; ARGV[3] record ttl ms
// Returns {complete (0/1), owner or "", entries after since, newest first}.
var historyScript = redis.NewScript(idLua + `
local since = ARGV[1]
local now = nowms()
local r = redis.call('HMGET', KEYS[2], 't', 'l', 'o', 'c')
local top, lost, owner = r[1], r[2], r[3] or ''
if top then top = string.match(top, '^(%S+)') end
-- Events after the confirmed mark wait in the outbox for replicas: not
-- readable yet (they arrive live once confirmed).
local mark = top and r[4]
if mark then top = mark end
local gone = agetrim(KEYS[1], now - tonumber(ARGV[2]))
if gone and top then
  lost = gone
  redis.call('HSET', KEYS[2], 'l', gone)
end
-- Read newest first, in growing chunks, until an entry at or before since:
-- the cost follows what is returned, not what is kept.
local out, start, size, nonempty = {}, 0, 16, false
while true do
  local chunk = redis.call('LRANGE', KEYS[1], start, start + size - 1)
  nonempty = nonempty or #chunk > 0
  local reached = false
  for _, e in ipairs(chunk) do
    local id = string.match(e, '^(%S+)')
    if not before(since, id) then reached = true break end
    if not mark or not before(mark, id) then out[#out + 1] = e end
  end
  if reached or #chunk < size then break end
  start, size = start + size, size * 2
end
local complete
if not top then
  complete = idms(since) >= now - tonumber(ARGV[3])
elseif not before(since, top) then
  complete = true
else
  complete = nonempty and (not lost or not before(since, lost))
end
return {complete and 1 or 0, owner, out}
`)

// baselineScript returns the newest event id of a channel (while events
// wait for replicas, the newest confirmed one, "c") or, when it has
// no record, "{now}-0", which comes before any event published later (a
// new record starts at seq 1) and tells a later history read how old the
// baseline is.
//
// KEYS[1] record
var baselineScript = redis.NewScript(idLua + `
local r = redis.call('HMGET', KEYS[1], 't', 'c')
if r[1] and r[2] then return r[2] end
if r[1] then return string.match(r[1], '^(%S+)') end
return fmt(nowms()) .. '-0'
`)

// Entry is one event read back from a channel's history.
type Entry struct {
	ID    string
	Frame []byte // the event frame exactly as it was published
}

// Default history window (PROTOCOL §5, HERALD_HISTORY_SIZE and _TTL) and
// how long a channel's record outlives it (HERALD_RECORD_TTL).
const (
	DefaultHistorySize = 100
	DefaultHistoryTTL  = 10 * time.Minute
	DefaultRecordTTL   = 24 * time.Hour
)

// LogConfig tunes a RedisLog. Zero fields take the defaults.
type LogConfig struct {
	HistorySize int64         // events kept per channel; DefaultHistorySize
	HistoryTTL  time.Duration // how long they are kept; DefaultHistoryTTL
	RecordTTL   time.Duration // how long a channel's newest id is remembered; DefaultRecordTTL, at least HistoryTTL
	Sharded     bool          // publish with SPUBLISH (Redis Cluster's sharded pub/sub) instead of PUBLISH

	// ReplicaAcks, when positive, makes a publish wait until that many
	// replicas of its Redis node have its events (WAIT) before the events
	// go out to subscribers and the call returns their ids; a publish no
	// replica confirms within ReplicaTimeout fails with ErrNotReplicated.
	// So an event acknowledged, or seen by any subscriber, survives the
	// failover of its node to a replica that had it. Default 0: publish at
	// once (asynchronous replication may lose acknowledged events in a
	// failover). ReplicaTimeout defaults to 1s.
	ReplicaAcks    int
	ReplicaTimeout time.Duration

	// OnBatch, if set, is called after each batch of publishes went to
	// Redis, for metrics: publishes arriving while script calls are under
	// way are group-committed into one batch of up to 256 events (one
	// script call; on a cluster one per partition, pipelined per node).
	// It gets the events the batch carried, how long its Redis work took
	// (every try, and with ReplicaAcks the WAIT and the outbox flush) and
	// the first script call's error, nil when all succeeded. It must not
	// block.
	OnBatch func(events int, took time.Duration, err error)
}

// RedisLog appends events to their channels' history in Redis and publishes
// them, through one server-side script per call. It is the single publish
// path of Herald: the gateway, its Go package and the classic ingress all
// use it. It is safe for concurrent use.
type RedisLog struct {
	rdb   redis.UniversalClient
	names Names
	cfg   LogConfig
	pub   string // PUBLISH or SPUBLISH

	calls batch.Combiner[*appendCall, *appendCall] // publishes, all under one key (publish.go)
}

// NewRedisLog returns a RedisLog on rdb with the names and window of cfg.
func NewRedisLog(rdb redis.UniversalClient, names Names, cfg LogConfig) *RedisLog {
	if cfg.HistorySize <= 0 {
		cfg.HistorySize = DefaultHistorySize
	}
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = DefaultHistoryTTL
	}
	if cfg.RecordTTL <= 0 {
		cfg.RecordTTL = DefaultRecordTTL
	}
	cfg.RecordTTL = max(cfg.RecordTTL, cfg.HistoryTTL)
	if cfg.ReplicaTimeout <= 0 {
		cfg.ReplicaTimeout = time.Second
	}
	pub := "PUBLISH"
	if cfg.Sharded {
		pub = "SPUBLISH"
	}
	l := &RedisLog{rdb: rdb, names: names, cfg: cfg, pub: pub}
	l.calls = batch.Combiner[*appendCall, *appendCall]{
		Run: l.publish, Weight: callWeight, MaxWeight: maxCallWeight, Timeout: callTimeout,
		Concurrency: callsInFlight,
	}
	return l
}

// Sharded reports whether the log publishes with SPUBLISH, for a Redis
// Cluster (LogConfig.Sharded): subscribers must then SSUBSCRIBE.
func (l *RedisLog) Sharded() bool { return l.cfg.Sharded }

// Range returns the retained events of channel published after the event
// id since ("" is "0-0", the beginning), oldest first, with their frames
// rebuilt exactly as they were published, whether nothing after since is
// gone, and the channel's recorded owner.
func (l *RedisLog) Range(ctx context.Context, channel, since string) (Replay, error) {
	if since == "" {
		since = "0-0"
	}
	if _, _, err := ParseID(since); err != nil {
		return Replay{}, &FieldError{Field: "since", Reason: "not an event id"}
	}
	keys := []string{l.names.History(channel), l.names.Record(channel)}
	res, err := historyScript.Run(ctx, l.rdb, keys, since, l.cfg.HistoryTTL.Milliseconds(), l.cfg.RecordTTL.Milliseconds()).Slice()
	if err != nil {
		return Replay{}, fmt.Errorf("read history: %w", err)
	}
	if len(res) != 3 {
		return Replay{}, fmt.Errorf("read history: unexpected reply of %d items", len(res))
	}
	owner, _ := res[1].(string)
	rows, _ := res[2].([]any)
	r := Replay{Complete: res[0] == int64(1), Owner: owner, Events: make([]Entry, len(rows))}
	for i, row := range rows {
		e, ok := row.(string)
		if !ok {
			return Replay{}, errors.New("read history: malformed entry")
		}
		id, p, ok := parseEntry(channel, e)
		if !ok {
			return Replay{}, errors.New("read history: malformed entry")
		}
		r.Events[len(rows)-1-i] = Entry{ID: id, Frame: AppendFrame(nil, id, p)}
	}
	return r, nil
}

// parseEntry splits a history entry "{id} {event} {data}".
func parseEntry(channel, e string) (id string, p Publication, ok bool) {
	id, rest, ok1 := strings.Cut(e, " ")
	event, data, ok2 := strings.Cut(rest, " ")
	return id, Publication{Channel: channel, Event: event, Data: []byte(data)}, ok1 && ok2
}

// Baselines returns, for each channel, its newest event id, or a baseline
// "{now}-0" when it has none (see baselineScript): a client that starts
// from it and later resumes with it as since misses nothing. One round
// trip for all channels.
func (l *RedisLog) Baselines(ctx context.Context, channels []string) ([]string, error) {
	cmds := make([]*redis.Cmd, len(channels))
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, ch := range channels {
			cmds[i] = baselineScript.EvalSha(ctx, p, []string{l.names.Record(ch)})
		}
		return nil
	})
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Scripts are not loaded inside pipelines: load it and try once more.
		if err = baselineScript.Load(ctx, l.rdb).Err(); err == nil {
			return l.Baselines(ctx, channels)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read baselines: %w", err)
	}
	out := make([]string, len(channels))
	for i, c := range cmds {
		if out[i], err = c.Text(); err != nil {
			return nil, fmt.Errorf("read baselines: %w", err)
		}
	}
	return out, nil
}

// Owner returns who owns an effect: the app's effect:{id}:owner key, else
// the owner recorded when an event named one; "" when neither is known.
func (l *RedisLog) Owner(ctx context.Context, effectID string) (string, error) {
	ch := EffectChannel(effectID)
	var key *redis.StringCmd
	var rec *redis.StringCmd
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		key = p.Get(ctx, OwnerKey(effectID))
		rec = p.HGet(ctx, l.names.Record(ch), "o")
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("read effect owner: %w", err)
	}
	if v := key.Val(); v != "" {
		return v, nil
	}
	return rec.Val(), nil
}

// SetOwner writes the app's effect:{id}:owner key for ttl, as an app
// starting a job does.
func (l *RedisLog) SetOwner(ctx context.Context, effectID, userID string, ttl time.Duration) error {
	if err := l.rdb.Set(ctx, OwnerKey(effectID), userID, ttl).Err(); err != nil {
		return fmt.Errorf("set effect owner: %w", err)
	}
	return nil
}
