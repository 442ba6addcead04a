package brokertest

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// WaitTimeout is how long the suite waits for an expected frame.
const WaitTimeout = 10 * time.Second

// Frame is one Handler call seen by a Recorder.
type Frame struct {
	Channel      string // the Handler's channel argument
	Owner        string // the Handler's owner argument
	Bytes        []byte
	events.Frame // Bytes decoded
}

// Recorder is a Handler that keeps every frame it gets, so that tests can
// wait for frames instead of sleeping. It is safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	frames []Frame
	signal chan struct{} // capacity 1: poked after each frame
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{signal: make(chan struct{}, 1)} }

// Handle is the broker.Handler. It never blocks for long.
func (r *Recorder) Handle(channel, _, owner string, frame []byte) {
	f := Frame{Channel: channel, Owner: owner, Bytes: frame}
	_ = json.Unmarshal(frame, &f.Frame) // a bad frame keeps zero fields and fails the test's checks
	r.mu.Lock()
	r.frames = append(r.frames, f)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// Frames returns a copy of the frames received so far, in arrival order.
func (r *Recorder) Frames() []Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.frames)
}

// On returns the frames received so far on channel, in arrival order.
func (r *Recorder) On(channel string) []Frame {
	var out []Frame
	for _, f := range r.Frames() {
		if f.Channel == channel {
			out = append(out, f)
		}
	}
	return out
}

// WaitFor waits until cond holds for the frames received so far and
// returns them; it fails the test after WaitTimeout, naming what.
func (r *Recorder) WaitFor(tb testing.TB, what string, cond func([]Frame) bool) []Frame {
	tb.Helper()
	f, ok := r.waitUntil(time.Now().Add(WaitTimeout), cond)
	if !ok {
		tb.Fatalf("timed out after %v waiting for %s; got %d frame(s)", WaitTimeout, what, len(f))
	}
	return f
}

// WaitID waits for the frame with event id on channel and returns all
// frames received up to then.
func (r *Recorder) WaitID(tb testing.TB, channel, id string) []Frame {
	tb.Helper()
	return r.WaitFor(tb, "frame "+id+" on "+channel, func(fs []Frame) bool {
		return slices.ContainsFunc(fs, func(f Frame) bool { return f.Channel == channel && f.ID == id })
	})
}

// Try is WaitFor with its own timeout and no failure: it reports whether
// cond came to hold.
func (r *Recorder) Try(timeout time.Duration, cond func([]Frame) bool) bool {
	_, ok := r.waitUntil(time.Now().Add(timeout), cond)
	return ok
}

func (r *Recorder) waitUntil(deadline time.Time, cond func([]Frame) bool) ([]Frame, bool) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		f := r.Frames()
		if cond(f) {
			return f, true
		}
		select {
		case <-r.signal:
		case <-timer.C:
			f = r.Frames()
			return f, cond(f)
		}
	}
}
