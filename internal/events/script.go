package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// publishScript appends each publication to its channel's history stream,
// trims the stream to the history window, publishes the event frame and
// returns the ids, all in one atomic step. With an idempotency key it first
// returns the ids of an earlier run with the same key, publishing nothing.
//
// KEYS[1..n]  history streams; KEYS[n+1] idempotency key when ARGV[3] > 0
// ARGV[1]     history size (MAXLEN)
// ARGV[2]     history ttl, ms
// ARGV[3]     idempotency ttl, ms (0: no key)
// ARGV[4+4i…] per publication: pub/sub channel, channel, event, data
//
// The frame it builds must stay byte-identical to AppendFrame (tested).
var publishScript = redis.NewScript(`
local n = #KEYS
local idem = tonumber(ARGV[3])
if idem > 0 then
  n = n - 1
  local prev = redis.call('GET', KEYS[n + 1])
  if prev then
    local ids = {}
    for id in string.gmatch(prev, '[^,]+') do ids[#ids + 1] = id end
    return ids
  end
end
local ttl = tonumber(ARGV[2])
local ids = {}
for i = 1, n do
  local a = 4 + (i - 1) * 4
  local id = redis.call('XADD', KEYS[i], 'MAXLEN', ARGV[1], '*', 'e', ARGV[a + 2], 'd', ARGV[a + 3])
  local ms = string.match(id, '^(%d+)')
  redis.call('XTRIM', KEYS[i], 'MINID', tostring(tonumber(ms) - ttl))
  redis.call('PEXPIRE', KEYS[i], ttl)
  redis.call('PUBLISH', ARGV[a], '{"type":"event","channel":"' .. ARGV[a + 1] .. '","id":"' .. id ..
    '","event":"' .. ARGV[a + 2] .. '","data":' .. ARGV[a + 3] .. ',"ts":' .. ms .. '}')
  ids[i] = id
end
if idem > 0 then
  redis.call('SET', KEYS[n + 1], table.concat(ids, ','), 'PX', idem)
end
return ids
`)

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

// ErrNoPublications is returned by Append when given nothing to publish.
var ErrNoPublications = errors.New("no publications")

// Append validates and publishes pubs atomically and returns their event
// ids, in order. A non-empty idemKey makes the call idempotent for the
// history window: a repeat returns the first call's ids and publishes
// nothing. Publications are validated first; a *FieldError names the bad
// one's field.
func (l *RedisLog) Append(ctx context.Context, idemKey string, pubs ...Publication) ([]string, error) {
	if len(pubs) == 0 {
		return nil, ErrNoPublications
	}
	keys := make([]string, 0, len(pubs)+1)
	args := make([]any, 0, 3+4*len(pubs))
	idemTTL := int64(0)
	if idemKey != "" {
		idemTTL = l.ttl.Milliseconds()
	}
	args = append(args, l.size, l.ttl.Milliseconds(), idemTTL)
	for _, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		keys = append(keys, l.names.History(p.Channel))
		args = append(args, l.names.PubSub(p.Channel), p.Channel, p.Event, p.data())
	}
	if idemKey != "" {
		keys = append(keys, l.names.Idempotency(idemKey))
	}
	res, err := publishScript.Run(ctx, l.rdb, keys, args...).StringSlice()
	if err != nil {
		// No channel name here: effect ids are capabilities, kept out of logs.
		return nil, fmt.Errorf("publish %d event(s): %w", len(pubs), err)
	}
	if len(res) != len(pubs) {
		return nil, fmt.Errorf("publish: idempotency key reused for %d event(s), got %d ids", len(pubs), len(res))
	}
	return res, nil
}

// Load loads the publish script into Redis's script cache, which pipelines
// need (EVALSHA has no EVAL fallback there). Call at start and after Redis
// restarts.
func (l *RedisLog) Load(ctx context.Context) error {
	return publishScript.Load(ctx, l.rdb).Err()
}

// Size and TTL report the history window.
func (l *RedisLog) Size() int64        { return l.size }
func (l *RedisLog) TTL() time.Duration { return l.ttl }
