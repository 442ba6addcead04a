package events

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Publishing is one script call for many publish calls. Calls to Append
// that arrive while a script call is under way wait, and the next script
// call carries all of them (group commit): at low load every call is
// published at once, alone; under load the fixed cost of a script call
// (EVALSHA, TIME, the idempotency of the call itself) is shared by every
// event it carries, which is most of what Redis spends per event. Each
// Append call stays atomic (a group of the script call) and keeps its own
// idempotency key.
//
// On a Redis Cluster (LogConfig.Sharded) a script may only touch one slot,
// so the waiting calls are split by partition, each call's events too, and
// the script calls of all partitions go out in one pipeline. A batch that
// spans partitions is then atomic per partition (so per channel), not as a
// whole: when one partition's script call fails, the others' events may
// be published, and the call reports the error; a retry with the same
// idempotency key publishes what is missing and returns every id. Each
// partition remembers the key with the whole call's fingerprint, so a
// repeat that changes the channels or events of any partition conflicts
// in all the partitions the first call touched (partitions only the
// repeat touches are published, as they hold no record of the key).

// publishScript publishes groups of publications: each group is one
// Append call, with its own idempotency key or none. KEYS[1] is the
// script call's own key: a repeat of this very call (go-redis retries a
// script whose reply was lost) returns the first run's reply and
// publishes nothing.
//
// Per publication it appends "{id} {event} {data}" to the history, sets
// the record's newest id (and the id gone from the history, and an
// effect's owner, when they change) and publishes the frame. Key TTLs and
// the trim by age are refreshed once per history TTL per channel, not on
// every publish: the record's "t" is "{newest id} {ms of the next
// refresh}", one field read and written per event. The history is kept
// 2 × TTL from a refresh, so at least one TTL after the last publish, and
// the record a record TTL after the last publish.
//
// An effect's owner is decided once: the owner the record holds, else the
// one the publisher names ("e:{user}"), which is then recorded. The
// pub/sub message of an owned effect's event is "{owner}\n{frame}".
//
// With ARGV[4] = OUTBOX (replica acknowledgements, see exec.go) the script
// does not publish: it appends each message to the outbox list, numbered
// by the outbox counter ("{n} {len(pubsub)} {pubsub}{message}"), and
// returns, after the groups, the counter's value: flushScript publishes
// the outbox up to it once a replica has the call's writes. A repeat of the call then rewrites its
// own key's expiry, so that WAIT on the repeat's connection covers the
// first run's writes too. A direct publish (PUBLISH, SPUBLISH) that finds
// the outbox not empty queues its messages there too, marked as needing
// no confirmation by a leading 0 on the length ("{n} 0{len(pubsub)} …",
// which flush scripts from before the mark read as the same length): the
// flush that publishes the entries before them
// publishes these right after, so the events of a channel go out in id
// order whatever each publisher's replica acks. (Published directly, a
// later event would overtake the queued ones, and subscribers would drop
// those as already seen.)
//
// While a channel has queued events, its record's "c" holds the newest id
// whose event is confirmed: history reads and baselines stop there
// (historyScript, baselineScript). A direct publish that finds the outbox
// empty writes no "c": without replica acks the cost per event stays one
// record write, plus one LLEN per script call.
//
// KEYS[1]  the call's own key
// ARGV[1]  history size     ARGV[2]  history ttl, ms
// ARGV[3]  record ttl, ms   ARGV[4]  PUBLISH, SPUBLISH or OUTBOX
// ARGV[5]  ms the call's own key is kept
// ARGV[6]  number of groups
// then per group: ARGV keyed (0/1), idempotency ttl ms, fingerprint, n;
// KEYS its idempotency key (when keyed), then per publication its history
// and record; ARGV per publication: pub/sub channel, channel, event, data,
// owner ("n": not an effect; "e": an effect whose owner the publisher does
// not know; "e:{user}").
//
// The last two KEYS are the outbox and its counter (also without OUTBOX:
// a direct publish checks that the outbox is empty).
//
// Returns per group {1, id…} or {0} (its key was used for other content),
// then with OUTBOX the counter. The frame it builds must stay
// byte-identical to AppendFrame (tested).
var publishScript = redis.NewScript(idLua + `
local pubcmd = ARGV[4]
local outbox = pubcmd == 'OUTBOX'
local prev = redis.call('GET', KEYS[1])
if prev then
  local body, upto = string.match(prev, '^([^|]*)|?(%d*)$')
  local out = {}
  for g in string.gmatch(body, '[^;]+') do
    local r = {}
    for v in string.gmatch(g, '[^,]+') do r[#r + 1] = v end
    r[1] = tonumber(r[1])
    out[#out + 1] = r
  end
  if outbox then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    out[#out + 1] = tonumber(upto)
  end
  return out
end
local maxlen, ttl, rttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
-- now in ms, as a number and as text, without number formatting.
local t = redis.call('TIME')
local nowstr = t[1] .. string.sub('00000' .. t[2], -6, -4)
local now = tonumber(nowstr)
local k, a = 2, 7
local out = {}
-- A direct publish queues behind whatever waits in the outbox, so that it
-- never overtakes an earlier event of its channels.
local queue = outbox or redis.call('LLEN', KEYS[#KEYS - 1]) > 0
local flag = outbox and '' or '0'
for g = 1, tonumber(ARGV[6]) do
  local keyed, idemttl, fp, n = ARGV[a] == '1', ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  local ikey, seen
  if keyed then
    ikey = KEYS[k]
    k = k + 1
    seen = redis.call('GET', ikey)
  end
  if seen then
    local pfp, list = string.match(seen, '^(%S+) (.*)$')
    local r = {0}
    if pfp == fp then
      r = {1}
      for id in string.gmatch(list, '[^,]+') do r[#r + 1] = id end
    end
    out[g] = r
    k, a = k + 2 * n, a + 5 * n
  else
    local r = {1}
    for _ = 1, n do
      local hist, rec = KEYS[k], KEYS[k + 1]
      local pubsub, channel, event, data, o = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
      k, a = k + 2, a + 5
      local top, x, held = nil, 0, false
      if queue then
        local tc = redis.call('HMGET', rec, 't', 'c')
        top, held = tc[1], tc[2]
      else
        top = redis.call('HGET', rec, 't')
      end
      if top then top, x = string.match(top, '^(%S+) (%S+)$') end
      local owner = o ~= 'n' and redis.call('HGET', rec, 'o')
      local id, ms, lost
      if top then
        local tm, ts = split(top)
        if #nowstr > #tm or (#nowstr == #tm and nowstr > tm) then ms, id = nowstr, nowstr .. '-0' else ms, id = tm, tm .. '-' .. (ts + 1) end
      else
        -- A new record: whatever this channel had before now - rttl is gone.
        ms, id, lost = nowstr, nowstr .. '-1', fmt(now - rttl) .. '-0'
      end
      local len = redis.call('LPUSH', hist, id .. ' ' .. event .. ' ' .. data)
      if len == 1 and top then
        lost = top -- the history had expired: everything before is gone
      elseif len > maxlen then
        local gone = redis.call('RPOP', hist, len - maxlen)
        lost = string.match(gone[#gone], '^(%S+)')
      end
      local refresh = tonumber(x) <= now
      if refresh then
        x = fmt(now + ttl)
        lost = agetrim(hist, now - ttl) or lost
      end
      local set = {'t', id .. ' ' .. x}
      if lost then set[#set + 1], set[#set + 2] = 'l', lost end
      if queue and not held then
        -- Readers stop at the confirmed mark until a flush moves it.
        set[#set + 1], set[#set + 2] = 'c', top or (ms .. '-0')
      end
      if o ~= 'n' and not owner and #o > 2 then
        owner = string.sub(o, 3)
        set[#set + 1], set[#set + 2] = 'o', owner
      end
      redis.call('HSET', rec, unpack(set))
      if refresh then
        redis.call('PEXPIRE', hist, 2 * ttl)
        redis.call('PEXPIRE', rec, rttl + ttl)
      end
      local frame = '{"type":"event","channel":"' .. channel .. '","id":"' .. id ..
        '","event":"' .. event .. '","data":' .. data .. ',"ts":' .. ms .. '}'
      if o ~= 'n' and owner then frame = owner .. '\n' .. frame end
      if queue then
        local n = redis.call('INCR', KEYS[#KEYS])
        redis.call('RPUSH', KEYS[#KEYS - 1], n .. ' ' .. flag .. #pubsub .. ' ' .. pubsub .. frame)
      else
        redis.call(pubcmd, pubsub, frame)
      end
      r[#r + 1] = id
    end
    if keyed then redis.call('SET', ikey, fp .. ' ' .. table.concat(r, ',', 2), 'PX', idemttl) end
    out[g] = r
  end
end
local enc = {}
for g, r in ipairs(out) do enc[g] = table.concat(r, ',') end
local rec = table.concat(enc, ';')
if outbox then
  local upto = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
  rec = rec .. '|' .. upto
  out[#out + 1] = upto
end
redis.call('SET', KEYS[1], rec, 'PX', ARGV[5])
return out
`)

// flushScript publishes the outbox of a partition (or of a single Redis)
// in order, up to the entry numbered ARGV[1] and past it through entries
// queued by direct publishes (a leading 0 on the length: no confirmation
// needed), and removes what it published. Entries after that wait for a
// later flush: they may not be on a replica yet. For each channel it
// published, it moves the record's confirmed mark "c" to the newest id
// published, or removes it when that is the channel's newest id ("t"):
// nothing waits any more. The record's name follows from the pub/sub
// channel's (Names: the prefix holds no "{"), the id from the frame.
//
// KEYS[1] the outbox; ARGV[1] the newest entry to publish; ARGV[2]
// PUBLISH or SPUBLISH. Returns how many it published.
var flushScript = redis.NewScript(`
local upto, cmd, n = tonumber(ARGV[1]), ARGV[2], 0
local marks, order = {}, {}
while true do
  local e = redis.call('LINDEX', KEYS[1], 0)
  if not e then break end
  local seq, direct, len, at = string.match(e, '^(%d+) (0?)(%d+) ()')
  if tonumber(seq) > upto and direct == '' then break end
  redis.call('LPOP', KEYS[1])
  local l = tonumber(len)
  local pubsub, msg = string.sub(e, at, at + l - 1), string.sub(e, at + l)
  local head, channel = string.match(pubsub, '^([^{]*{h%d+}):c:(.*)$')
  local id = string.match(msg, '"id":"([^"]+)"')
  if head and id then
    local rec = head .. ':m:' .. channel
    if not marks[rec] then order[#order + 1] = rec end
    marks[rec] = id
  end
  redis.call(cmd, pubsub, msg)
  n = n + 1
end
for _, rec in ipairs(order) do
  local tc = redis.call('HMGET', rec, 't', 'c')
  if tc[1] and tc[2] then
    if string.match(tc[1], '^(%S+)') == marks[rec] then
      redis.call('HDEL', rec, 'c')
    else
      redis.call('HSET', rec, 'c', marks[rec])
    end
  end
end
return n
`)

// Limits of one script call: it blocks Redis while it runs. A call's
// weight is its events plus one per 4 KiB of data (callWeight). Up to
// callsInFlight script calls are under way at once, so that Redis has the
// next one while a reply travels back. Two do that; four split the waiting
// publishes into more, smaller calls at moderate rates (5k single-event
// publishes/s: Redis 52 µs per event with four, 47 with two) for no gain at
// the ceiling (batch publishes, best of two runs: 25,313 events/s with
// either).
const (
	maxCallWeight = 256
	callTimeout   = 5 * time.Second
	callsInFlight = 2
)

// ErrNoPublications is returned by Append when given nothing to publish.
var ErrNoPublications = errors.New("no publications")

// appendCall is one Append to publish.
type appendCall struct {
	key         string // scoped idempotency key, "" for none
	pubs        []Publication
	owners      []string // the script's owner argument per publication
	bytes       int
	fingerprint string // Fingerprint(pubs)
	ids         []string
	err         error // this call's own failure (a key reused), or the script call's
}

func callWeight(c *appendCall) int { return len(c.pubs) + c.bytes/4096 }

// Append validates and publishes pubs atomically and returns their event
// ids, in order. A non-empty scopedKey (see ScopedKey) makes the call
// idempotent for the history TTL: a repeat returns the first call's ids
// and publishes nothing; a repeat for other channels or events fails with
// ErrIdempotencyConflict. Publications are validated first; a *FieldError
// names the bad one's field. go-redis's own retry of a script call that
// reached Redis never publishes twice.
//
// The owner of an effect published without one in its data is read from
// the app's effect:{id}:owner key first (one more round trip).
//
// When ctx ends while the call waits or is under way, Append returns
// ctx's error; its events may still be published.
func (l *RedisLog) Append(ctx context.Context, scopedKey string, pubs ...Publication) ([]string, error) {
	if len(pubs) == 0 {
		return nil, ErrNoPublications
	}
	n := 0
	pubs = slices.Clone(pubs)
	for i, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		pubs[i] = p.Normalized()
		n += len(p.Channel) + len(p.Event) + len(pubs[i].Data)
	}
	owners, err := l.owners(ctx, pubs)
	if err != nil {
		return nil, err
	}
	c, err := l.calls.Do(ctx, "", &appendCall{key: scopedKey, pubs: pubs, owners: owners, bytes: n, fingerprint: Fingerprint(pubs)})
	if err != nil {
		return nil, fmt.Errorf("publish %d event(s): %w", len(pubs), err)
	}
	return c.ids, c.err
}

// scriptCall is one run of publishScript: its groups (parts of calls),
// keys and arguments, and how it went.
type scriptCall struct {
	tag    string // the partition's hash tag on a cluster, "" otherwise
	groups []group
	keys   []string
	args   []any
	res    []any // the script's reply
	upto   int64 // with an outbox: the newest outbox entry the call may flush
	err    error
}

// group is the part of one Append call published by one script call: all
// of it, or on a cluster the publications of one partition.
type group struct {
	call *appendCall
	idx  []int // the call's publications in this group, in order
}

// publish publishes appends in one script call (or, on a cluster, one per
// partition, grouped by node; with replica acks followed by WAIT and the
// outbox flush, see exec.go) and sets every call's ids or error.
func (l *RedisLog) publish(ctx context.Context, _ string, appends []*appendCall) ([]*appendCall, error) {
	for _, c := range appends {
		c.ids = make([]string, len(c.pubs))
	}
	calls := l.scriptCalls(appends)
	start := time.Now()
	l.run(ctx, calls)
	took := time.Since(start)
	var err error
	for _, sc := range calls {
		l.apply(sc)
		if err == nil {
			err = sc.err
		}
	}
	if l.cfg.OnBatch != nil {
		n := 0
		for _, c := range appends {
			n += len(c.pubs)
		}
		l.cfg.OnBatch(n, took, err)
	}
	return appends, nil
}

// apply hands the groups of a finished script call their ids or errors.
func (l *RedisLog) apply(sc *scriptCall) {
	if sc.err != nil {
		for _, g := range sc.groups {
			if g.call.err == nil {
				// No channel name here: effect ids are capabilities, kept out of logs.
				g.call.err = fmt.Errorf("publish %d event(s): %w", len(g.call.pubs), sc.err)
			}
		}
		return
	}
	for i, g := range sc.groups {
		var r []any
		if i < len(sc.res) {
			r, _ = sc.res[i].([]any)
		}
		switch {
		case len(r) == 1 && r[0] == int64(0):
			g.call.err = ErrIdempotencyConflict
		case len(r) != len(g.idx)+1 || r[0] != int64(1):
			g.call.err = fmt.Errorf("publish: idempotency key reused for %d event(s), got %d ids", len(g.idx), len(r)-1)
		default:
			for j, pi := range g.idx {
				g.call.ids[pi], _ = r[j+1].(string)
			}
		}
	}
}

// scriptCalls lays batch out as script calls: one for all of it, or on a
// cluster one per partition.
func (l *RedisLog) scriptCalls(batch []*appendCall) []*scriptCall {
	if !l.cfg.Sharded {
		gs := make([]group, len(batch))
		for i, c := range batch {
			gs[i] = group{call: c, idx: seq(len(c.pubs))}
		}
		return []*scriptCall{l.scriptCall("", gs)}
	}
	byPart := map[int][]group{}
	var order []int
	for _, c := range batch {
		idxs := map[int][]int{}
		var parts []int
		for i, p := range c.pubs {
			pt := Partition(p.Channel)
			if _, ok := idxs[pt]; !ok {
				parts = append(parts, pt)
			}
			idxs[pt] = append(idxs[pt], i)
		}
		for _, pt := range parts {
			if _, ok := byPart[pt]; !ok {
				order = append(order, pt)
			}
			byPart[pt] = append(byPart[pt], group{call: c, idx: idxs[pt]})
		}
	}
	calls := make([]*scriptCall, len(order))
	for i, pt := range order {
		calls[i] = l.scriptCall(Tag(pt), byPart[pt])
	}
	return calls
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// scriptCall builds the keys and arguments of one run of publishScript;
// tag is the partition's hash tag on a cluster, "" otherwise.
func (l *RedisLog) scriptCall(tag string, groups []group) *scriptCall {
	sc := &scriptCall{tag: tag, groups: groups}
	sc.keys = append(sc.keys, l.names.Idempotency(tag, autoKey()))
	cmd := l.pub
	if l.cfg.ReplicaAcks > 0 {
		cmd = "OUTBOX"
	}
	sc.args = append(sc.args, l.cfg.HistorySize, l.cfg.HistoryTTL.Milliseconds(), l.cfg.RecordTTL.Milliseconds(),
		cmd, AutoKeyTTL.Milliseconds(), len(groups))
	for _, g := range groups {
		c := g.call
		pubs := make([]Publication, len(g.idx))
		for i, pi := range g.idx {
			pubs[i] = c.pubs[pi]
		}
		keyed := "0"
		if c.key != "" {
			keyed = "1"
			sc.keys = append(sc.keys, l.names.Idempotency(tag, c.key))
		}
		// The whole call's fingerprint, also in each partition's key: a
		// repeat that differs in another partition conflicts here too.
		sc.args = append(sc.args, keyed, idemTTL(c.key, l.cfg.HistoryTTL).Milliseconds(), c.fingerprint, strconv.Itoa(len(pubs)))
		for i, p := range pubs {
			sc.keys = append(sc.keys, l.names.History(p.Channel), l.names.Record(p.Channel))
			sc.args = append(sc.args, l.names.PubSub(p.Channel), p.Channel, p.Event, p.data(), c.owners[g.idx[i]])
		}
	}
	sc.keys = append(sc.keys, l.names.Outbox(tag), l.names.OutboxSeq(tag))
	return sc
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
