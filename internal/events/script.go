package events

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// trimLua trims a history stream to its window (maxlen 0: by age only) and
// remembers, in its
// companion "lost" key, the id of the newest event it removed, so that a
// later read can tell whether an event after some id is gone. Both keys
// live 2 × ttl after the last publish: longer than any retained event.
const trimLua = `
local function trim(stream, lost, maxlen, minms, ttl)
  local gone
  local over = 0
  if maxlen > 0 then over = redis.call('XLEN', stream) - maxlen end
  if over > 0 then
    local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', over)
    gone = old[#old][1]
    redis.call('XTRIM', stream, 'MAXLEN', maxlen)
  end
  local aged = redis.call('XREVRANGE', stream, '(' .. minms .. '-0', '-', 'COUNT', 1)
  if #aged > 0 then
    gone = aged[1][1]
    redis.call('XTRIM', stream, 'MINID', minms)
  end
  if gone then
    redis.call('SET', lost, gone, 'PX', 2 * ttl)
  end
end
`

// publishScript appends each publication to its channel's history stream,
// trims the stream to the history window, publishes the event frame and
// returns the ids, all in one atomic step. With an idempotency key it first
// returns the ids of an earlier run with the same key, publishing nothing.
//
// The idempotency key keeps the call's fingerprint with its ids: a repeat
// to other channels or of other events is refused (IDEMCONFLICT) rather
// than silently answered with the ids of something else.
//
// KEYS[2i-1], KEYS[2i]  history stream and its lost key, per publication;
// KEYS[2n+1]            idempotency key when ARGV[3] > 0
// ARGV[1]               history size
// ARGV[2]               history ttl, ms
// ARGV[3]               idempotency ttl, ms (0: no key)
// ARGV[4]               the call's fingerprint (Fingerprint)
// ARGV[5+4i…]           per publication: pub/sub channel, channel, event, data
//
// The frame it builds must stay byte-identical to AppendFrame (tested).
var publishScript = redis.NewScript(trimLua + `
local idem = tonumber(ARGV[3])
local n = #KEYS
if idem > 0 then
  n = n - 1
  local prev = redis.call('GET', KEYS[n + 1])
  if prev then
    local fp, list = string.match(prev, '^(%S+) (.*)$')
    if fp ~= ARGV[4] then
      return redis.error_reply('IDEMCONFLICT idempotency key already used for other content')
    end
    local ids = {}
    for id in string.gmatch(list, '[^,]+') do ids[#ids + 1] = id end
    return ids
  end
end
n = n / 2
local maxlen = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local ids = {}
for i = 1, n do
  local a = 5 + (i - 1) * 4
  local stream, lost = KEYS[2 * i - 1], KEYS[2 * i]
  local id = redis.call('XADD', stream, '*', 'e', ARGV[a + 2], 'd', ARGV[a + 3])
  local ms = string.match(id, '^(%d+)')
  trim(stream, lost, maxlen, tostring(tonumber(ms) - ttl), ttl)
  redis.call('PEXPIRE', stream, 2 * ttl)
  redis.call('PUBLISH', ARGV[a], '{"type":"event","channel":"' .. ARGV[a + 1] .. '","id":"' .. id ..
    '","event":"' .. ARGV[a + 2] .. '","data":' .. ARGV[a + 3] .. ',"ts":' .. ms .. '}')
  ids[i] = id
end
if idem > 0 then
  redis.call('SET', KEYS[2 * n + 1], ARGV[4] .. ' ' .. table.concat(ids, ','), 'PX', idem)
end
return ids
`)

// historyScript reads a channel's history after an event id and says
// whether it is complete: whether no event after that id was trimmed away
// (the lost key holds the newest trimmed id). It trims by age first, so the
// answer holds at the moment of the read; trimming by size is left to the
// publishers, whose setting may differ from this reader's. Once the keys
// expired (2 × ttl after the last publish), a read with an id is answered
// "incomplete", conservatively.
//
// KEYS[1] history stream, KEYS[2] its lost key
// ARGV[1] since ("" for everything); ARGV[2] ttl ms
// Returns {complete (0/1), entries}.
var historyScript = redis.NewScript(trimLua + `
local since = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then
  if since == '' then return {1, {}} end
  return {0, {}}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
trim(KEYS[1], KEYS[2], 0, tostring(now - tonumber(ARGV[2])), tonumber(ARGV[2]))
local lost = redis.call('GET', KEYS[2])
local complete = 1
if lost then
  if since == '' then
    complete = 0
  else
    local sm, ss = string.match(since, '^(%d+)-(%d+)$')
    local lm, ls = string.match(lost, '^(%d+)-(%d+)$')
    sm, ss, lm, ls = tonumber(sm), tonumber(ss), tonumber(lm), tonumber(ls)
    if sm < lm or (sm == lm and ss < ls) then complete = 0 end
  end
end
local start = '-'
if since ~= '' then start = '(' .. since end
return {complete, redis.call('XRANGE', KEYS[1], start, '+')}
`)

// Entry is one event read back from a channel's history.
type Entry struct {
	ID    string
	Frame []byte // the event frame exactly as it was published
}

// Range returns the retained events of channel published after the event
// id since ("" for all), oldest first, with their frames rebuilt exactly as
// they were published. complete is false when an event after since was
// already trimmed from the history window.
func (l *RedisLog) Range(ctx context.Context, channel, since string) (entries []Entry, complete bool, err error) {
	if since != "" {
		if _, _, err := ParseID(since); err != nil {
			return nil, false, &FieldError{Field: "since", Reason: "not an event id"}
		}
	}
	keys := []string{l.names.History(channel), l.names.Lost(channel)}
	res, err := historyScript.Run(ctx, l.rdb, keys, since, l.ttl.Milliseconds()).Slice()
	if err != nil {
		return nil, false, fmt.Errorf("read history: %w", err)
	}
	if len(res) != 2 {
		return nil, false, fmt.Errorf("read history: unexpected reply of %d items", len(res))
	}
	complete = res[0] == int64(1)
	rows, _ := res[1].([]any)
	entries = make([]Entry, 0, len(rows))
	for _, row := range rows {
		r, ok := row.([]any)
		if !ok || len(r) != 2 {
			return nil, false, errors.New("read history: malformed stream entry")
		}
		id, _ := r[0].(string)
		fields, _ := r[1].([]any)
		p := Publication{Channel: channel}
		for i := 0; i+1 < len(fields); i += 2 {
			v, _ := fields[i+1].(string)
			switch fields[i] {
			case "e":
				p.Event = v
			case "d":
				p.Data = json.RawMessage(v)
			}
		}
		entries = append(entries, Entry{ID: id, Frame: AppendFrame(nil, id, p)})
	}
	return entries, complete, nil
}

// Default history window (PROTOCOL §5, HERALD_HISTORY_SIZE and _TTL).
const (
	DefaultHistorySize = 100
	DefaultHistoryTTL  = 10 * time.Minute
)

// RedisLog appends events to their channels' history in Redis and publishes
// them, through one server-side script per call. It is the single publish
// path of Herald: the gateway, its Go package and the classic ingress all
// use it. It is safe for concurrent use.
type RedisLog struct {
	rdb   redis.Scripter
	names Names
	size  int64
	ttl   time.Duration
}

// NewRedisLog returns a RedisLog keeping size events for ttl per channel;
// zero values take the defaults.
func NewRedisLog(rdb redis.Scripter, names Names, size int64, ttl time.Duration) *RedisLog {
	if size <= 0 {
		size = DefaultHistorySize
	}
	if ttl <= 0 {
		ttl = DefaultHistoryTTL
	}
	return &RedisLog{rdb: rdb, names: names, size: size, ttl: ttl}
}

// AutoKeyPrefix starts the idempotency keys Herald makes up itself for
// calls that came without one (see AutoKey). They only need to outlive
// retries, so they are kept for AutoKeyTTL instead of the history TTL.
const (
	AutoKeyPrefix = "auto:"
	AutoKeyTTL    = time.Minute
)

// AutoKey returns a fresh random idempotency key for one publish call, so
// that retrying the call, by go-redis after a broken connection or by the
// caller after a timeout, cannot publish twice.
func AutoKey() string {
	var b [16]byte
	rand.Read(b[:])
	return AutoKeyPrefix + hex.EncodeToString(b[:])
}

// ErrIdempotencyConflict is returned when an idempotency key already served
// a publish to other channels or of other events: retrying is safe, reusing
// a key for something else is a mistake, and answering it with the first
// call's ids would silently lose the new events.
var ErrIdempotencyConflict = errors.New("idempotency key already used for other channels or events")

// Fingerprint identifies what a publish call is about, for idempotency: its
// channels and event names, in order. The data is left out on purpose: a
// retry may carry data that differs in detail (a re-run job's completion
// time), and it is the first call's data that was published.
func Fingerprint(pubs []Publication) string {
	h := sha256.New()
	for _, p := range pubs {
		for _, part := range []string{p.Channel, p.Event} {
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(len(part)))
			h.Write(n[:])
			h.Write([]byte(part))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// ErrNoPublications is returned by Append when given nothing to publish.
var ErrNoPublications = errors.New("no publications")

// Append validates and publishes pubs atomically and returns their event
// ids, in order. A non-empty idemKey makes the call idempotent for the
// history window (for AutoKeyTTL when it came from AutoKey): a repeat
// returns the first call's ids and publishes nothing. Without a key Append
// makes one up, so that go-redis's own retry of a script that reached Redis
// cannot publish twice. Publications are validated first; a *FieldError
// names the bad one's field.
func (l *RedisLog) Append(ctx context.Context, idemKey string, pubs ...Publication) ([]string, error) {
	if len(pubs) == 0 {
		return nil, ErrNoPublications
	}
	keys := make([]string, 0, 2*len(pubs)+1)
	args := make([]any, 0, 3+4*len(pubs))
	if idemKey == "" {
		idemKey = AutoKey()
	}
	idemTTL := l.ttl.Milliseconds()
	if strings.HasPrefix(idemKey, AutoKeyPrefix) {
		idemTTL = AutoKeyTTL.Milliseconds()
	}
	args = append(args, l.size, l.ttl.Milliseconds(), idemTTL, Fingerprint(pubs))
	for _, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		keys = append(keys, l.names.History(p.Channel), l.names.Lost(p.Channel))
		args = append(args, l.names.PubSub(p.Channel), p.Channel, p.Event, p.data())
	}
	keys = append(keys, l.names.Idempotency(idemKey))
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
