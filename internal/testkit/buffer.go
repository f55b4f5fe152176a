package testkit

import (
	"bytes"
	"encoding/json"
	"sync"
	"testing"
)

// SyncBuffer is a bytes.Buffer that a logger (or a command's output) and
// the test may use concurrently. Its zero value is an empty buffer.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p to the buffer.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what has been written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// JSONLines returns the lines written so far, each decoded as a JSON object
// (the form of zerolog's output); empty lines are skipped. A line that is
// not a JSON object fails the test.
func (b *SyncBuffer) JSONLines(tb testing.TB) []map[string]any {
	tb.Helper()
	var lines []map[string]any
	for _, l := range bytes.Split([]byte(b.String()), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			tb.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}
