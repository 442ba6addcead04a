package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// A channel lives in Redis as two keys of one hash slot (see Names):
//
//   - its history, a list of "{id} {event} {data}" entries, newest first,
//     at most the history size long, none older than the history TTL (the
//     key itself expires one TTL after the last publish);
//   - its record, a hash that outlives the history (the record TTL, 24 h
//     by default): "t" the newest event id ever assigned, "l" the newest id
//     known to be gone from the history, "o" an effect's owner.
//
// Event ids are "{ms}-{seq}" with ms from Redis's clock, increasing per
// channel like a stream's. A channel whose record is new starts at seq 1,
// so that a baseline "{ms}-0" read while it had no record (see
// RedisLog.Baselines) comes before its first event. The record keeps what
// a resume needs to be exact without keeping events: a client whose since
// is at or after "t" missed nothing, even once the history expired.

// idLua holds the Lua helpers the scripts share: ids as numbers and their
// order.
const idLua = `
local function idms(id) return tonumber(string.match(id, '^(%d+)-')) end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
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

// publishScript appends each publication to its channel's history,
// updates the channel's record, publishes the event frame and returns the
// ids, all in one atomic step. With an idempotency key it first returns the
// ids of an earlier run with the same key, publishing nothing; the key
// keeps the call's fingerprint with its ids, so a repeat to other channels
// or of other events is refused (IDEMCONFLICT) rather than silently
// answered with the ids of something else.
//
// An effect's owner is decided once: the owner the record holds, else the
// one the publisher names (ARGV owner "e:{user}"), which is then recorded.
// The pub/sub message of an owned effect's event is "{owner}\n{frame}",
// so that gateways deliver it to the owner's sockets only.
//
// KEYS[2i-1], KEYS[2i]  history and record, per publication
// KEYS[2n+1]            idempotency key when ARGV[4] > 0
// ARGV[1]               history size
// ARGV[2]               history ttl, ms
// ARGV[3]               record ttl, ms
// ARGV[4]               idempotency ttl, ms (0: no key)
// ARGV[5]               the call's fingerprint (Fingerprint)
// ARGV[6]               PUBLISH or SPUBLISH
// ARGV[7+5i…]           per publication: pub/sub channel, channel, event, data, owner
//
// where owner is "n" (not an effect), "e" (an effect whose owner the
// publisher does not know) or "e:{user}".
//
// The frame it builds must stay byte-identical to AppendFrame (tested).
var publishScript = redis.NewScript(idLua + `
local idem = tonumber(ARGV[4])
local n = #KEYS
if idem > 0 then
  n = n - 1
  local prev = redis.call('GET', KEYS[n + 1])
  if prev then
    local fp, list = string.match(prev, '^(%S+) (.*)$')
    if fp ~= ARGV[5] then
      return redis.error_reply('IDEMCONFLICT idempotency key already used for other content')
    end
    local ids = {}
    for id in string.gmatch(list, '[^,]+') do ids[#ids + 1] = id end
    return ids
  end
end
n = n / 2
local maxlen, ttl, rttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = nowms()
local ids = {}
for i = 1, n do
  local a = 7 + (i - 1) * 5
  local hist, rec = KEYS[2 * i - 1], KEYS[2 * i]
  local r = redis.call('HMGET', rec, 't', 'o')
  local top, owner = r[1], r[2]
  local id, ms, lost
  if top then
    local tm, ts = string.match(top, '^(%d+)-(%d+)$')
    tm, ts = tonumber(tm), tonumber(ts)
    if now > tm then ms, id = now, fmt(now) .. '-0' else ms, id = tm, fmt(tm) .. '-' .. fmt(ts + 1) end
  else
    -- A new record: whatever this channel had before now - rttl is gone.
    ms, id, lost = now, fmt(now) .. '-1', fmt(now - rttl) .. '-0'
  end
  local len = redis.call('LPUSH', hist, id .. ' ' .. ARGV[a + 2] .. ' ' .. ARGV[a + 3])
  if len == 1 and top then
    lost = top -- the history had expired: everything before is gone
  elseif len > maxlen then
    local gone = redis.call('RPOP', hist, len - maxlen)
    lost = string.match(gone[#gone], '^(%S+)')
  end
  lost = agetrim(hist, now - ttl) or lost
  local o = ARGV[a + 4]
  if o ~= 'n' and not owner and #o > 2 then
    owner = string.sub(o, 3)
    redis.call('HSET', rec, 'o', owner)
  end
  if lost then
    redis.call('HSET', rec, 't', id, 'l', lost)
  else
    redis.call('HSET', rec, 't', id)
  end
  redis.call('PEXPIRE', hist, ttl)
  redis.call('PEXPIRE', rec, rttl)
  local frame = '{"type":"event","channel":"' .. ARGV[a + 1] .. '","id":"' .. id ..
    '","event":"' .. ARGV[a + 2] .. '","data":' .. ARGV[a + 3] .. ',"ts":' .. fmt(ms) .. '}'
  if o ~= 'n' and owner then frame = owner .. '\n' .. frame end
  redis.call(ARGV[6], ARGV[a], frame)
  ids[i] = id
end
if idem > 0 then
  redis.call('SET', KEYS[2 * n + 1], ARGV[5] .. ' ' .. table.concat(ids, ','), 'PX', idem)
end
return ids
`)

// historyScript reads a channel's history after an event id and says
// whether it is complete: whether no event after that id is gone. It
// trims by age first, so the answer holds at the moment of the read.
//
//   - With no record, nothing was published for a record TTL: complete
//     when since is younger than that.
//   - since at or after the newest id ("t"): nothing was published after
//     it, complete.
//   - Otherwise events after since exist: complete when the history holds
//     them all, i.e. it is not empty and no id after since left it ("l").
//
// KEYS[1] history, KEYS[2] record
// ARGV[1] since; ARGV[2] history ttl ms; ARGV[3] record ttl ms
// Returns {complete (0/1), owner or "", entries after since, newest first}.
var historyScript = redis.NewScript(idLua + `
local since = ARGV[1]
local now = nowms()
local r = redis.call('HMGET', KEYS[2], 't', 'l', 'o')
local top, lost, owner = r[1], r[2], r[3] or ''
local gone = agetrim(KEYS[1], now - tonumber(ARGV[2]))
if gone and top then
  lost = gone
  redis.call('HSET', KEYS[2], 'l', gone)
end
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local out = {}
for _, e in ipairs(all) do
  if not before(since, string.match(e, '^(%S+)')) then break end
  out[#out + 1] = e
end
local complete
if not top then
  complete = idms(since) >= now - tonumber(ARGV[3])
elseif not before(since, top) then
  complete = true
else
  complete = #all > 0 and (not lost or not before(since, lost))
end
return {complete and 1 or 0, owner, out}
`)

// baselineScript returns the newest event id of a channel or, when it has
// no record, "{now}-0", which comes before any event published later (a
// new record starts at seq 1) and tells a later history read how old the
// baseline is.
//
// KEYS[1] record
var baselineScript = redis.NewScript(idLua + `
local top = redis.call('HGET', KEYS[1], 't')
if top then return top end
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
	pub := "PUBLISH"
	if cfg.Sharded {
		pub = "SPUBLISH"
	}
	return &RedisLog{rdb: rdb, names: names, cfg: cfg, pub: pub}
}

// ErrNoPublications is returned by Append when given nothing to publish.
var ErrNoPublications = errors.New("no publications")

// Append validates and publishes pubs atomically and returns their event
// ids, in order. A non-empty scopedKey (see ScopedKey) makes the call
// idempotent for the history TTL: a repeat returns the first call's ids
// and publishes nothing. Without a key Append makes one up, kept
// AutoKeyTTL, so that go-redis's own retry of a script that reached Redis
// cannot publish twice. Publications are validated first; a *FieldError
// names the bad one's field.
//
// The owner of an effect published without one in its data is read from
// the app's effect:{id}:owner key first (one more round trip).
func (l *RedisLog) Append(ctx context.Context, scopedKey string, pubs ...Publication) ([]string, error) {
	if len(pubs) == 0 {
		return nil, ErrNoPublications
	}
	for _, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	owners, err := l.owners(ctx, pubs)
	if err != nil {
		return nil, err
	}
	if scopedKey == "" {
		scopedKey = AutoKey()
	}
	keys := make([]string, 0, 2*len(pubs)+1)
	args := make([]any, 0, 6+5*len(pubs))
	args = append(args, l.cfg.HistorySize, l.cfg.HistoryTTL.Milliseconds(), l.cfg.RecordTTL.Milliseconds(),
		idemTTL(scopedKey, l.cfg.HistoryTTL).Milliseconds(), Fingerprint(pubs), l.pub)
	for i, p := range pubs {
		keys = append(keys, l.names.History(p.Channel), l.names.Record(p.Channel))
		args = append(args, l.names.PubSub(p.Channel), p.Channel, p.Event, p.data(), owners[i])
	}
	tag := ""
	if l.cfg.Sharded {
		tag = Tag(Partition(pubs[0].Channel))
	}
	keys = append(keys, l.names.Idempotency(tag, scopedKey))
	res, err := publishScript.Run(ctx, l.rdb, keys, args...).StringSlice()
	if redis.HasErrorPrefix(err, "IDEMCONFLICT") {
		return nil, ErrIdempotencyConflict
	}
	if err != nil {
		// No channel name here: effect ids are capabilities, kept out of logs.
		return nil, fmt.Errorf("publish %d event(s): %w", len(pubs), err)
	}
	if len(res) != len(pubs) {
		return nil, fmt.Errorf("publish: idempotency key reused for %d event(s), got %d ids", len(pubs), len(res))
	}
	return res, nil
}

// owners returns the script's owner argument of each publication: "n" for
// channels that are not effects, "e:{user}" for effects whose owner the
// data names or whose effect:{id}:owner key is set, "e" otherwise.
func (l *RedisLog) owners(ctx context.Context, pubs []Publication) ([]string, error) {
	out := make([]string, len(pubs))
	var lookups map[int]*redis.StringCmd
	for i, p := range pubs {
		kind, id, _ := ParseChannel(p.Channel)
		switch {
		case kind != KindEffect:
			out[i] = "n"
		case p.ImpliedOwner() != "":
			out[i] = "e:" + p.ImpliedOwner()
		default:
			out[i] = "e"
			if lookups == nil {
				lookups = make(map[int]*redis.StringCmd)
			}
			lookups[i] = redis.NewStringCmd(ctx, "GET", OwnerKey(id))
		}
	}
	if len(lookups) == 0 {
		return out, nil
	}
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, cmd := range lookups {
			p.Process(ctx, cmd)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read effect owners: %w", err)
	}
	for i, cmd := range lookups {
		if owner, err := cmd.Result(); err == nil && ValidName(owner) {
			out[i] = "e:" + owner
		}
	}
	return out, nil
}

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
