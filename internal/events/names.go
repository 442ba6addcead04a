package events

import (
	"hash/crc32"
	"strconv"
)

// Names builds the Redis names Herald owns. The classic keys of PROTOCOL §1
// (session:{id}, effect:complete, effect:{id}:owner, ratelimit:{id},
// bucket:{id}) are not built here: they stay exactly as existing apps
// write them.
//
// Herald's own names live under "herald:" after an optional Prefix, so that
// they never collide with an app's own keys or channels.
//
// Every name that belongs to one channel (its history, its record, its
// pub/sub channel, the idempotency keys of publishes to it) carries the
// channel's partition as a Redis Cluster hash tag, "{hN}": all of them
// hash to one slot, so one script can touch them all on a cluster, and a
// gateway can subscribe a partition's channels through one connection.
type Names struct {
	Prefix string // prepended to every name; default empty; must not contain '{' or '}'
}

// Partitions is the number of partitions channels are hashed into. It is
// part of the names in Redis: changing it orphans every history.
const Partitions = 64

// Partition returns the partition of a channel, in [0, Partitions).
func Partition(channel string) int {
	return int(crc32.ChecksumIEEE([]byte(channel)) % Partitions)
}

// Tag returns the hash tag of partition p, "{hN}".
func Tag(p int) string { return "{h" + strconv.Itoa(p) + "}" }

// perChannel builds a name of channel's partition: Prefix herald:{hN}:kind:channel.
func (n Names) perChannel(kind, channel string) string {
	return n.Prefix + "herald:" + Tag(Partition(channel)) + ":" + kind + ":" + channel
}

// PubSub is the Redis pub/sub channel that carries the event frames of a
// Herald channel.
func (n Names) PubSub(channel string) string { return n.perChannel("c", channel) }

// ChannelOf reverses PubSub; ok is false for names PubSub did not build.
func (n Names) ChannelOf(pubsub string) (channel string, ok bool) {
	head := n.Prefix + "herald:{h"
	if len(pubsub) <= len(head) || pubsub[:len(head)] != head {
		return "", false
	}
	rest := pubsub[len(head):]
	for i := 0; i < len(rest); i++ {
		if rest[i] == '}' {
			if len(rest) < i+4 || rest[i+1:i+4] != ":c:" {
				return "", false
			}
			channel = rest[i+4:]
			if channel == "" || n.PubSub(channel) != pubsub {
				return "", false
			}
			return channel, true
		}
	}
	return "", false
}

// History is the list that keeps a channel's recent events, newest first.
func (n Names) History(channel string) string { return n.perChannel("h", channel) }

// Record is the hash that remembers, beyond the history, a channel's newest
// event id ("t"), the newest id that left its history ("l") and, for an
// effect, its owner ("o").
func (n Names) Record(channel string) string { return n.perChannel("m", channel) }

// Idempotency is the key that remembers the ids of a publish made with the
// scoped idempotency key (see ScopedKey). tag is "" on a single Redis,
// where one key covers a whole call, and the partition's Tag on a cluster,
// where a call is published (and remembered) per partition.
func (n Names) Idempotency(tag, scopedKey string) string {
	if tag == "" {
		return n.Prefix + "herald:i:" + scopedKey
	}
	return n.Prefix + "herald:" + tag + ":i:" + scopedKey
}

// Outbox is the list of pub/sub messages whose events were appended but
// not yet published: with replica acknowledgements (LogConfig.ReplicaAcks)
// a message goes out only once a replica has its event. tag is the
// partition's Tag on a cluster, "" on a single Redis. OutboxSeq numbers
// its entries.
func (n Names) Outbox(tag string) string { return n.Prefix + "herald:" + tagged(tag) + "o" }

// OutboxSeq is the counter that numbers the entries of Outbox(tag).
func (n Names) OutboxSeq(tag string) string { return n.Prefix + "herald:" + tagged(tag) + "o:n" }

// tagged is tag followed by a colon, or "" for no tag.
func tagged(tag string) string {
	if tag == "" {
		return ""
	}
	return tag + ":"
}

// Ticket is the key of a one-time connect ticket.
func (n Names) Ticket(ticket string) string { return n.Prefix + "herald:ticket:" + ticket }

// Revocations is the pub/sub channel on which revoked sessions are announced
// to every replica.
func (n Names) Revocations() string { return n.Prefix + "herald:revoked" }

// Jobs is the stream the worker consumes jobs from.
func (n Names) Jobs() string { return n.Prefix + "herald:jobs" }

// OwnerKey is the classic key an app writes to record who owns an effect
// (PROTOCOL §2). It is never prefixed.
func OwnerKey(effectID string) string { return "effect:" + effectID + ":owner" }
