package ctxio

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestWriterStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	var buf bytes.Buffer
	w := Writer(ctx, &buf)
	if n, err := w.Write([]byte("ab")); n != 2 || err != nil {
		t.Fatalf("write before the end = %d, %v", n, err)
	}
	stop := errors.New("shutting down")
	cancel(stop)
	if n, err := w.Write([]byte("cd")); n != 0 || !errors.Is(err, stop) {
		t.Fatalf("write after the end = %d, %v; want 0 and the cause", n, err)
	}
	if buf.String() != "ab" {
		t.Errorf("wrote %q, want only what came before the end", buf.String())
	}
}
