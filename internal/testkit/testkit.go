// Package testkit holds the helpers that the tests of several kpd packages
// share: a clock that moves only when told to, a log sink safe for
// concurrent use, a runner for background loops, polling, a plain HTTP
// request, and the ts-mls fixtures of testdata/mls.
//
// It imports nothing of kpd but the root package, so that the tests of any
// package, mls included, may use it without an import cycle.
package testkit

import (
	"context"
	"testing"
	"time"
)

// Start runs run in a goroutine with a context that stop cancels. stop
// waits for run to return and fails the test if it does not within 5 s.
// stop is also registered as a cleanup of tb; calling it again is harmless.
func Start(tb testing.TB, run func(context.Context)) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx)
	}()
	stop = func() {
		tb.Helper()
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			tb.Fatal("Run did not return after its context ended")
		}
	}
	tb.Cleanup(stop)
	return stop
}

// Eventually polls cond every 5 ms until it holds, failing the test with
// "timed out waiting for <what>" when it still does not after 5 s.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
