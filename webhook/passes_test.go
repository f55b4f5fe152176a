package webhook

import (
	"testing"
	"time"
)

// Passes over the whole outbox for retries are spaced so that reading it
// takes at most a tenth of the time: a large outbox behind a receiver that
// is down is not read end to end every poll interval.
func TestFullPassesSpacedByReadTime(t *testing.T) {
	due := map[deviceKey]*retry{{"did:plc:a", "phone"}: {failures: 3, next: time.Now().Add(-time.Minute)}}
	p := &passes{poll: time.Second, retries: due, lastFull: time.Now().Add(-2 * time.Second)}

	p.fullRead = 100 * time.Millisecond // a small outbox: the poll interval rules
	if !p.retryDue() || p.nextWait() != 0 {
		t.Errorf("read in 100ms, 2s ago: retry due %v, next wait %v; want a pass now", p.retryDue(), p.nextWait())
	}
	p.fullRead = time.Second // a large one: ten times its read time
	if p.retryDue() {
		t.Error("read in 1s, 2s ago: a retry pass is allowed, want none before 10s")
	}
	// Passes over the events added since keep the poll interval.
	if w := p.nextWait(); w != p.poll {
		t.Errorf("read in 1s, 2s ago: next wait %v, want the poll interval", w)
	}
	// A retry due before the next poll waits for the gap.
	p.poll = 9 * time.Second
	if w := p.nextWait(); w < 7*time.Second || w > 8*time.Second {
		t.Errorf("read in 1s, 2s ago, polling every 9s: next wait %v, want about 8s", w)
	}
}
