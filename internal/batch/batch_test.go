package batch

import (
	"context"
	"testing"
	"time"
)

func TestContextEndsWhenEveryCallerGaveUp(t *testing.T) {
	a, cancelA := context.WithCancel(context.Background())
	b, cancelB := context.WithCancel(context.Background())
	ctx, cancel := Context([]context.Context{a, b}, time.Hour)
	defer cancel()
	cancelA()
	select {
	case <-ctx.Done():
		t.Fatal("ended when one of two callers gave up")
	default:
	}
	cancelB()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("still running when every caller gave up")
	}
}

func TestContextTimeoutAndCancel(t *testing.T) {
	ctx, cancel := Context([]context.Context{context.Background()}, time.Millisecond)
	defer cancel()
	<-ctx.Done() // the timeout ends it
	ctx, cancel = Context([]context.Context{context.Background()}, time.Hour)
	cancel()
	if ctx.Err() == nil {
		t.Fatal("cancel did not end it")
	}
}
