package atproto

import (
	"container/heap"
	"sync"
	"time"
)

// replayCache remembers the tokens (by a hash of iss and jti) accepted and
// not yet expired, at most max of them.
type replayCache struct {
	max int

	mu    sync.Mutex
	seen  map[[32]byte]time.Time // id -> exp
	byExp expiryHeap
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: map[[32]byte]time.Time{}}
}

// add records id until exp. It fails with Unauthorized (ReasonReplayed) if
// id is recorded and not expired at now, and with Unavailable
// (ReasonReplayCacheFull) if the cache holds max unexpired ids.
func (c *replayCache) add(id [32]byte, exp, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(now)
	if prev, ok := c.seen[id]; ok && prev.After(now) {
		return unauthorized(ReasonReplayed, "this token (iss and jti) was already used")
	}
	if len(c.seen) >= c.max {
		return unavailable(ReasonReplayCacheFull, c.byExp[0].exp.Sub(now),
			"too many unexpired tokens to remember; try again later")
	}
	c.seen[id] = exp
	heap.Push(&c.byExp, expiry{id: id, exp: exp})
	return nil
}

// expire forgets the ids whose exp is not after now. c.mu is held.
func (c *replayCache) expire(now time.Time) {
	for len(c.byExp) > 0 && !c.byExp[0].exp.After(now) {
		e := heap.Pop(&c.byExp).(expiry)
		if c.seen[e.id].Equal(e.exp) {
			delete(c.seen, e.id)
		}
	}
}

// expiry is one id's exp, in the heap ordered by exp.
type expiry struct {
	id  [32]byte
	exp time.Time
}

// expiryHeap is a min-heap of expiries (container/heap).
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].exp.Before(h[j].exp) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
