package httpapi

import (
	"sync"
	"time"

	"github.com/kpd-dir/kpd"
)

// DefaultMaxWaiters is the default of Config.MaxWaiters.
const DefaultMaxWaiters = 10_000

// DefaultMaxWaitersPerDID is the default of Config.MaxWaitersPerDID: SPEC
// section 7's default of devices per DID, so that each device of a DID can
// have a listing waiting.
const DefaultMaxWaitersPerDID = 20

// welcomeWaiter is a store that can tell when a Welcome for a device
// commits; *kv.DB is one. The channel is closed on that commit (or when the
// store closes); cancel releases it. Stores without it answer listings at
// once, whatever their wait.
type welcomeWaiter interface {
	WaitWelcome(did, device string) (ch <-chan struct{}, cancel func())
}

// waiterLimit counts the listings waiting at once, in all and per caller
// DID, so that one DID cannot take every slot.
type waiterLimit struct {
	max, perDID int
	mu          sync.Mutex
	n           int            // guarded by mu
	byDID       map[string]int // guarded by mu; no zero entries
}

func newWaiterLimit(max, perDID int) *waiterLimit {
	return &waiterLimit{
		max:    orDefault(max, DefaultMaxWaiters),
		perDID: orDefault(perDID, DefaultMaxWaitersPerDID),
		byDID:  make(map[string]int),
	}
}

// acquire takes a slot for a listing of did; when all slots, or all of
// did's, are taken it returns an Unavailable error saying which.
func (l *waiterLimit) acquire(did string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.n >= l.max:
		return kpd.Errorf(kpd.CodeUnavailable, "too many listings are waiting for Welcomes; retry later")
	case l.byDID[did] >= l.perDID:
		return kpd.Errorf(kpd.CodeUnavailable,
			"%d listings of this DID are already waiting for Welcomes, the most one DID may have; retry later", l.perDID)
	}
	l.n++
	l.byDID[did]++
	return nil
}

// release frees a slot that acquire(did) took.
func (l *waiterLimit) release(did string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.byDID[did]--; l.byDID[did] <= 0 {
		delete(l.byDID, did)
	}
}

// pendingWelcomes lists the device's pending Welcomes. With wait > 0 and a
// store that can wait, an empty listing waits up to wait for a Welcome for
// the device to commit and lists again; it ends early, with what is
// pending, when the client goes away or the server shuts down (Config.Done).
// When MaxWaiters listings already wait, or MaxWaitersPerDID of the
// caller's, an empty listing fails with Unavailable instead.
func (s *server) pendingWelcomes(r *request, opts kpd.ListWelcomesOptions, wait time.Duration) ([]kpd.PendingWelcome, error) {
	list := func() ([]kpd.PendingWelcome, error) {
		return s.store.PendingWelcomes(r.Context(), r.caller, r.device, opts)
	}
	waiter, ok := s.store.(welcomeWaiter)
	if wait <= 0 || !ok {
		return list()
	}
	if full := s.waiters.acquire(r.caller); full != nil {
		pending, err := list()
		if err != nil || len(pending) > 0 {
			return pending, err
		}
		return nil, full
	}
	defer s.waiters.release(r.caller)
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
