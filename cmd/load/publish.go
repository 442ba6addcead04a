package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald"
)

// event is one event to publish: the index of its channel and its
// sequence number within that channel.
type event struct {
	ch  int
	seq int64
}

// publisher sends a group of events in one call (one event unless
// batching). Implementations are safe for concurrent use.
type publisher interface {
	publish(ctx context.Context, evs []event) error
}

// httpPublisher publishes through the servers' publish API. Herald gets
// each call on one replica in turn; baseline servers share nothing, so each
// of them gets every call.
type httpPublisher struct {
	client  *http.Client
	urls    []string
	toAll   bool
	batch   bool
	key     string
	names   func(ch int) string
	payload int
	next    atomic.Uint64
}

func (p *httpPublisher) publish(ctx context.Context, evs []event) error {
	now := time.Now().UnixNano()
	var body []byte
	path := "/api/publish"
	if p.batch {
		path = "/api/publish/batch"
		body = append(body, `{"items":[`...)
	}
	for i, ev := range evs {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"channel":`...)
		body = strconv.AppendQuote(body, p.names(ev.ch))
		body = append(body, `,"event":"load","data":`...)
		body = appendData(body, ev.seq, now, p.payload)
		body = append(body, '}')
	}
	if p.batch {
		body = append(body, "]}"...)
	}
	urls := p.urls
	if !p.toAll {
		i := int(p.next.Add(1) % uint64(len(urls)))
		urls = urls[i : i+1]
	}
	for _, u := range urls {
		if err := p.post(ctx, u+path, body); err != nil {
			return err
		}
	}
	return nil
}

func (p *httpPublisher) post(ctx context.Context, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.key)
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("publish: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// goPublisher publishes with Herald's Go package, straight into Redis.
type goPublisher struct {
	pub     herald.Publisher
	names   func(ch int) string
	payload int
}

func (p *goPublisher) publish(ctx context.Context, evs []event) error {
	now := time.Now().UnixNano()
	if len(evs) == 1 {
		_, err := p.pub.Publish(ctx, p.names(evs[0].ch), "load", json.RawMessage(appendData(nil, evs[0].seq, now, p.payload)))
		return err
	}
	msgs := make([]herald.Message, len(evs))
	for i, ev := range evs {
		msgs[i] = herald.Message{Channel: p.names(ev.ch), Event: "load", Data: json.RawMessage(appendData(nil, ev.seq, now, p.payload))}
	}
	_, err := p.pub.PublishBatch(ctx, msgs)
	return err
}

// pumpResult is what one publishing phase achieved.
type pumpResult struct {
	accepted []int64 // events accepted per channel
	events   int64   // accepted in all
	failed   int64   // events whose call failed
	elapsed  time.Duration
	errs     []string
	calls    histSnap // each call's latency: request sent → answer read (failed calls too)
}

// pump publishes at rate events per second for dur, the k-th event (k
// counting on from *next) going to the channel and sequence that eventOf
// says. Calls run inflight at a time; when they cannot keep up the pace
// falls behind, events that were not sent by the end of dur are never
// sent, and the achieved rate shows it. Each call carries up to batch
// events that fell due together.
func pump(ctx context.Context, pub publisher, rate float64, dur time.Duration, inflight, batch, channels int,
	next *int64, eventOf func(k int64) event) pumpResult {
	res := pumpResult{accepted: make([]int64, channels)}
	var mu sync.Mutex // guards res
	var callLatency histogram
	calls := make(chan []event, inflight)
	var wg sync.WaitGroup
	for range inflight {
		wg.Go(func() {
			for evs := range calls {
				start := time.Now()
				err := pub.publish(ctx, evs)
				callLatency.record(time.Since(start).Microseconds())
				mu.Lock()
				if err != nil {
					res.failed += int64(len(evs))
					if len(res.errs) < maxErrors {
						res.errs = append(res.errs, err.Error())
					}
				} else {
					for _, ev := range evs {
						res.accepted[ev.ch]++
					}
					res.events += int64(len(evs))
				}
				mu.Unlock()
			}
		})
	}

	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	issued := int64(0)
issue:
	for {
		elapsed := time.Since(start)
		if elapsed >= dur {
			break
		}
		due := min(int64(rate*elapsed.Seconds())+1, int64(rate*dur.Seconds()+0.5))
		for issued < due && time.Since(start) < dur {
			n := min(due-issued, int64(batch))
			evs := make([]event, n)
			for i := range evs {
				evs[i] = eventOf(*next)
				*next++
			}
			issued += n
			select {
			case calls <- evs:
			case <-ctx.Done():
				break issue
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			break issue
		}
	}
	tick.Stop()
	close(calls)
	wg.Wait()
	res.elapsed = time.Since(start)
	res.calls = callLatency.take()
	return res
}
