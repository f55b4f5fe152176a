package bench

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
)

func TestCodeOf(t *testing.T) {
	for want, err := range map[kpd.Code]error{
		kpd.CodeRateLimited: fmt.Errorf("claim: %w", &client.Error{Status: 429, Code: kpd.CodeRateLimited}),
		kpd.CodeExhausted:   kpd.Errorf(kpd.CodeExhausted, "no KeyPackage"),
		"Canceled":          context.DeadlineExceeded,
		"Transport":         errors.New("connection refused"),
	} {
		if got := codeOf(err); got != want {
			t.Errorf("codeOf(%v) = %q, want %q", err, got, want)
		}
	}
}

// Workers' results merge into per-operation reports: failures are counted
// by code, not timed, and throughput is over the timed phase.
func TestRecorderMerge(t *testing.T) {
	a, b := newRecorder(), newRecorder()
	a.ok(opClaim, 2*time.Millisecond, 1)
	b.ok(opClaim, 4*time.Millisecond, 1)
	b.fail(opClaim, kpd.Errorf(kpd.CodeExhausted, "first"))
	b.fail(opClaim, kpd.Errorf(kpd.CodeExhausted, "second"))
	a.ok(opPublish, time.Millisecond, 50)
	total := newRecorder()
	total.merge(a)
	total.merge(b)
	if total.total() != 5 {
		t.Errorf("total %d, want 5", total.total())
	}
	ops, errs := total.reports(2 * time.Second)
	if len(ops) != 2 || ops[0].Op != opPublish || ops[1].Op != opClaim {
		t.Fatalf("reports %+v", ops)
	}
	c := ops[1]
	if c.Count != 2 || c.Errors != 2 || c.PerSecond != 1 || c.MaxMs != 4 || c.MeanMs != 3 {
		t.Errorf("claim report %+v", c)
	}
	if ops[0].ItemsPerSecond != 25 {
		t.Errorf("publish items/s %v, want 25", ops[0].ItemsPerSecond)
	}
	if len(errs) != 1 || errs[0].Count != 2 || errs[0].Code != kpd.CodeExhausted || errs[0].Sample != "Exhausted: first" {
		t.Errorf("errors %+v", errs)
	}
}

// commitTimes records commits only between start and stop, and a start
// forgets what an earlier phase recorded.
func TestCommitTimes(t *testing.T) {
	var c commitTimes
	c.CommitBatch(1, time.Second) // before start: the set-up phase
	c.start()
	c.CommitBatch(3, 3*time.Millisecond)
	c.CommitBatch(1, time.Millisecond)
	got := c.stop()
	c.CommitBatch(1, time.Hour) // after stop
	if want := []time.Duration{time.Millisecond, 3 * time.Millisecond}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("recorded %v, want %v", got, want)
	}
	c.start()
	if got := c.stop(); len(got) != 0 {
		t.Errorf("a new phase starts with %v", got)
	}
}
