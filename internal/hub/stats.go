package hub

import "github.com/heraldgw/herald/internal/events"

// Write describes one batch of frames a connection's writer took from its
// send queue and wrote to the socket (Config.OnWrite).
type Write struct {
	// Frames is how many frames the writer took: the queue's depth when it
	// woke, 1 while the socket keeps up.
	Frames int
	// Oldest is the publish time, in milliseconds since the Unix epoch (the
	// time part of the event id), of the oldest live event frame the batch
	// carried; 0 when it carried none. Frames replayed from history by a
	// join or resume, replies and notices do not count as live.
	Oldest int64
}

// Queued is a snapshot of the send queues of all connections.
type Queued struct {
	Frames int // frames waiting for a writer, not the ones being written
	Bytes  int // their bytes
	// MaxFill is the fullest queue as a fraction of the limit that closes
	// its connection with CloseSlowConsumer: QueueBytes, or QueueLen as
	// well while the connection's socket write is blocked (see Config),
	// whichever is nearer. 1 means its next frame closes it.
	MaxFill float64
}

// Queued sums the send queues of every connection. It visits every
// connection, each under its own lock: it is meant for a metrics scrape,
// not a hot path.
func (h *Hub) Queued() Queued {
	var q Queued
	h.Each(func(c *Conn) {
		c.mu.Lock()
		q.Frames += len(c.queue)
		q.Bytes += c.bytes + c.extra
		fill := float64(c.bytes) / float64(h.cfg.QueueBytes)
		if c.writeBlocked() {
			fill = max(fill, float64(c.frames)/float64(h.cfg.QueueLen))
		}
		c.mu.Unlock()
		q.MaxFill = max(q.MaxFill, fill)
	})
	return q
}

// publishedMS returns the publish time in an event id ("{ms}-{seq}"), or 0
// when id is not one.
func publishedMS(id string) int64 {
	ms, _, err := events.ParseID(id)
	if err != nil || ms > 1<<62 {
		return 0
	}
	return int64(ms)
}
