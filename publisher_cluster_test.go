package herald_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// TestRedisPublisherOnACluster: given a cluster client the publisher
// publishes the way gateways in cluster mode subscribe, with SPUBLISH on
// each channel's slot; a batch over channels of several slots is published
// per slot, and a repeat with its idempotency key returns the same ids.
func TestRedisPublisherOnACluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	rdb := c.Client()
	ctx := context.Background()
	p := herald.NewRedisPublisher(rdb, herald.RedisConfig{ReplicaAcks: 1})

	channels := []string{"user:1", "user:2", "user:3", "public:news", "public:sport"}
	subs := map[string]*redis.PubSub{}
	for _, ch := range channels {
		ps := rdb.SSubscribe(ctx, names.PubSub(ch)) // one connection per slot
		t.Cleanup(func() { ps.Close() })
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		subs[ch] = ps
	}
	var msgs []herald.Message
	for _, ch := range channels {
		msgs = append(msgs, herald.Message{Channel: ch, Event: "e", Data: map[string]string{"on": ch}})
	}
	ids, err := p.PublishBatch(ctx, msgs, herald.IdempotencyKey("batch-1"))
	if err != nil {
		t.Fatal(err)
	}
	for i, ch := range channels {
		m, err := subs[ch].ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := events.FrameID([]byte(m.Payload)); id != ids[i] {
			t.Errorf("%s: received %s, want %s", ch, id, ids[i])
		}
	}
	again, err := p.PublishBatch(ctx, msgs, herald.IdempotencyKey("batch-1"))
	if err != nil || !slices.Equal(again, ids) {
		t.Errorf("repeat: %v, %v; want %v", again, err, ids)
	}
}

// TestRedisPublisherReplicaAcks: the publisher honours ReplicaAcks. With
// no replica to confirm, a publish fails with ErrNotReplicated and no
// subscriber gets it; once a replica is in sync, a publish succeeds and
// both events go out, in order.
func TestRedisPublisherReplicaAcks(t *testing.T) {
	primary := redistest.Start(t)
	rdb := primary.Client()
	ctx := context.Background()
	p := herald.NewRedisPublisher(rdb, herald.RedisConfig{ReplicaAcks: 1, ReplicaTimeout: 50 * time.Millisecond, Publisher: "acks"})
	ps := rdb.Subscribe(ctx, names.PubSub("user:acks"))
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := p.Publish(ctx, "user:acks", "e", nil)
	if !errors.Is(err, herald.ErrNotReplicated) {
		t.Fatalf("publish with no replica: %v, want ErrNotReplicated", err)
	}
	host, port, _ := net.SplitHostPort(primary.Addr)
	redistest.Start(t, "--replicaof", host, port)
	id, err := p.Publish(ctx, "user:acks", "e", nil, herald.IdempotencyKey("after-sync"))
	if err != nil {
		t.Fatalf("publish with a replica: %v", err)
	}
	var got []string
	for len(got) < 2 {
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fid, _ := events.FrameID([]byte(m.Payload))
		got = append(got, fid)
	}
	if got[1] != id || events.CompareIDs(got[0], got[1]) >= 0 {
		t.Errorf("messages %v, want the unconfirmed event, then %s", got, id)
	}
}
