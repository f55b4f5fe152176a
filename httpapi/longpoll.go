package httpapi

import (
	"sync/atomic"
	"time"

	"github.com/kpd-dir/kpd"
)

// DefaultMaxWaiters is the default of Config.MaxWaiters.
const DefaultMaxWaiters = 10_000

// welcomeWaiter is a store that can tell when a Welcome for a device
// commits; *kv.DB is one. The channel is closed on that commit (or when the
// store closes); cancel releases it. Stores without it answer listings at
// once, whatever their wait.
type welcomeWaiter interface {
	WaitWelcome(did, device string) (ch <-chan struct{}, cancel func())
}

// waiterLimit counts the listings waiting at once.
type waiterLimit struct {
	max int64
	n   atomic.Int64
}

func newWaiterLimit(max int) *waiterLimit {
	return &waiterLimit{max: int64(orDefault(max, DefaultMaxWaiters))}
}

// acquire takes a slot; false when all are taken.
func (l *waiterLimit) acquire() bool {
	if l.n.Add(1) > l.max {
		l.n.Add(-1)
		return false
	}
	return true
}

func (l *waiterLimit) release() { l.n.Add(-1) }

// pendingWelcomes lists the device's pending Welcomes. With wait > 0 and a
// store that can wait, an empty listing waits up to wait for a Welcome for
// the device to commit and lists again; it ends early, with what is
// pending, when the client goes away or the server shuts down (Config.Done).
// When MaxWaiters listings already wait, an empty listing fails with
// Unavailable instead.
func (s *server) pendingWelcomes(r *request, opts kpd.ListWelcomesOptions, wait time.Duration) ([]kpd.PendingWelcome, error) {
	list := func() ([]kpd.PendingWelcome, error) {
		return s.store.PendingWelcomes(r.Context(), r.caller, r.device, opts)
	}
	waiter, ok := s.store.(welcomeWaiter)
	if wait <= 0 || !ok {
		return list()
	}
	if !s.waiters.acquire() {
		pending, err := list()
		if err != nil || len(pending) > 0 {
			return pending, err
		}
		return nil, kpd.Errorf(kpd.CodeUnavailable, "too many listings are waiting for Welcomes; retry later")
	}
	defer s.waiters.release()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		// Register before listing, so that a Welcome committed in between
		// still wakes the wait.
		woken, cancel := waiter.WaitWelcome(r.caller, r.device)
		pending, err := list()
		if err != nil || len(pending) > 0 {
			cancel()
			return pending, err
		}
		select {
		case <-woken:
			// A Welcome for the device committed; it may be of another
			// conversation than the filter, so list again and go on
			// waiting if it is.
			cancel()
			continue
		case <-deadline.C:
		case <-r.Context().Done():
		case <-s.done:
		}
		cancel()
		return pending, nil
	}
}
