package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestProbe(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
	}))
	defer srv.Close()

	if err := run(context.Background(), []string{srv.URL + "/readyz"}, io.Discard); err != nil {
		t.Errorf("200: got %v, want healthy", err)
	}
	status = http.StatusServiceUnavailable
	if err := run(context.Background(), []string{srv.URL + "/readyz"}, io.Discard); err == nil {
		t.Error("503: got healthy, want an error")
	}
	srv.Close()
	if err := run(context.Background(), []string{"-timeout", "1s", srv.URL}, io.Discard); err == nil {
		t.Error("no server: got healthy, want an error")
	}
	if err := run(context.Background(), nil, io.Discard); err == nil {
		t.Error("no URL: got healthy, want a usage error")
	}
}
