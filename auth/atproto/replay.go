package atproto

import (
	"container/heap"
	"sync"
	"time"
)

// replayCache remembers the tokens (by a hash of iss and jti) accepted and
// not yet expired: at most max of them, and at most perDID of one issuer,
// so that one DID cannot fill the cache and lock every other caller out.
type replayCache struct {
	max, perDID int

	mu    sync.Mutex
	seen  map[[32]byte]time.Time // id -> exp
	byExp expiryHeap
	// issuers holds the exps of each issuer's remembered ids.
	issuers map[string]*timeHeap
}

func newReplayCache(max, perDID int) *replayCache {
	return &replayCache{max: max, perDID: perDID, seen: map[[32]byte]time.Time{}, issuers: map[string]*timeHeap{}}
}

// add records id, a token of issuer did, until exp. It fails with
// Unauthorized (ReasonReplayed) if id is recorded and not expired at now,
// with RateLimited (ReasonTooManyTokens) if did has perDID unexpired ids,
// and with Unavailable (ReasonReplayCacheFull) if the cache holds max
// unexpired ids. Each failure's RetryAfter is when an id it counts expires.
func (c *replayCache) add(did string, id [32]byte, exp, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(now)
	if prev, ok := c.seen[id]; ok && prev.After(now) {
		return unauthorized(ReasonReplayed, "this token (iss and jti) was already used")
	}
	iss := c.issuers[did]
	if iss != nil && iss.Len() >= c.perDID {
		return rateLimited(ReasonTooManyTokens, (*iss)[0].Sub(now),
			"%s has %d unexpired tokens with a jti, the most kpd remembers for one DID; try again later", did, c.perDID)
	}
	if len(c.seen) >= c.max {
		return unavailable(ReasonReplayCacheFull, c.byExp[0].exp.Sub(now),
			"too many unexpired tokens to remember; try again later")
	}
	if iss == nil {
		iss = &timeHeap{}
		c.issuers[did] = iss
	}
	c.seen[id] = exp
	heap.Push(&c.byExp, expiry{id: id, did: did, exp: exp})
	heap.Push(iss, exp)
	return nil
}

// expire forgets the ids whose exp is not after now. c.mu is held.
func (c *replayCache) expire(now time.Time) {
	for len(c.byExp) > 0 && !c.byExp[0].exp.After(now) {
		e := heap.Pop(&c.byExp).(expiry)
		if c.seen[e.id].Equal(e.exp) {
			delete(c.seen, e.id)
		}
		// The issuer's earliest exp is e.exp: the ones before were popped
		// already.
		if iss := c.issuers[e.did]; iss != nil {
			heap.Pop(iss)
			if iss.Len() == 0 {
				delete(c.issuers, e.did)
			}
		}
	}
}

// expiry is one id's exp, in the heap ordered by exp.
type expiry struct {
	id  [32]byte
	did string
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

// timeHeap is a min-heap of times (container/heap).
type timeHeap []time.Time

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h timeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *timeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}
