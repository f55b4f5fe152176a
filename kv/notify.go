package kv

import (
	"sync"

	"github.com/kpd-dir/kpd/index"
)

// WaitWelcome registers a waiter for the device's next Welcome and returns
// a channel that is closed when a transaction routing a Welcome to the
// device commits after this call, or when the database closes. cancel
// releases the waiter (it is safe to call more than once, and after the
// channel closed); every waiter must be cancelled or woken, or it stays
// registered.
//
// A long-poll must call WaitWelcome before it lists the pending Welcomes,
// then wait on the channel only if the list was empty, then list again:
// a Welcome that commits between the listing and the wait still closes
// the channel, since the waiter was registered first. After Close the
// channel is closed at once.
func (db *DB) WaitWelcome(did, device string) (ch <-chan struct{}, cancel func()) {
	return db.waiters.add(string(index.Device(did, device)))
}

// waiters are the channels of WaitWelcome callers, by device key.
type waiters struct {
	mu     sync.Mutex
	closed bool
	m      map[string]map[chan struct{}]struct{}
}

func (w *waiters) add(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		close(ch)
		return ch, func() {}
	}
	if w.m == nil {
		w.m = make(map[string]map[chan struct{}]struct{})
	}
	if w.m[key] == nil {
		w.m[key] = make(map[chan struct{}]struct{})
	}
	w.m[key][ch] = struct{}{}
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if set := w.m[key]; set != nil {
			delete(set, ch)
			if len(set) == 0 {
				delete(w.m, key)
			}
		}
	}
}

// wake closes and forgets the waiters of the devices with these keys.
func (w *waiters) wake(keys []string) {
	if len(keys) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, key := range keys {
		for ch := range w.m[key] {
			close(ch)
		}
		delete(w.m, key)
	}
}

// close wakes every waiter and makes later ones return closed channels.
func (w *waiters) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, set := range w.m {
		for ch := range set {
			close(ch)
		}
	}
	w.m = nil
}
