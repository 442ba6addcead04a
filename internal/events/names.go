package events

// Names builds the Redis names Herald owns. The classic keys of PROTOCOL §1
// (session:{id}, effect:complete, ratelimit:{id}, bucket:{id}) are not built
// here: they stay exactly as existing apps write them.
//
// Herald's own names live under "herald:" after an optional Prefix, so that
// they never collide with an app's own keys or channels.
type Names struct {
	Prefix string // prepended to every name; default empty
}

func (n Names) own(kind, rest string) string { return n.Prefix + "herald:" + kind + ":" + rest }

// PubSub is the Redis pub/sub channel that carries the event frames of a
// Herald channel.
func (n Names) PubSub(channel string) string { return n.own("ch", channel) }

// ChannelOf reverses PubSub; ok is false for names PubSub did not build.
func (n Names) ChannelOf(pubsub string) (channel string, ok bool) {
	p := n.own("ch", "")
	if len(pubsub) <= len(p) || pubsub[:len(p)] != p {
		return "", false
	}
	return pubsub[len(p):], true
}

// History is the stream that keeps a channel's recent events.
func (n Names) History(channel string) string { return n.own("history", channel) }

// Lost is the key that keeps the id of the newest event trimmed from a
// channel's history, so that a resume can tell whether it missed any.
func (n Names) Lost(channel string) string { return n.own("lost", channel) }

// Idempotency is the key that remembers the ids of a publish made with an
// idempotency key.
func (n Names) Idempotency(key string) string { return n.own("idem", key) }

// Ticket is the key of a one-time connect ticket.
func (n Names) Ticket(ticket string) string { return n.own("ticket", ticket) }

// Revocations is the pub/sub channel on which revoked sessions are announced
// to every replica.
func (n Names) Revocations() string { return n.Prefix + "herald:revoked" }

// Jobs is the stream the worker consumes jobs from.
func (n Names) Jobs() string { return n.Prefix + "herald:jobs" }
