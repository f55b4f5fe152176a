package atproto

import (
	"context"
	"sync"
	"time"

	"github.com/kpd-dir/kpd"
)

// keyCache caches the #atproto keys of DIDs. Concurrent lookups of one DID
// share one fetch. Failures that are the DID's own (unknown DID, bad
// document) are cached for negativeTTL; Unavailable ones are not cached.
type keyCache struct {
	fetch       func(ctx context.Context, did string) (*publicKey, error)
	clock       kpd.Clock
	ttl         time.Duration
	negativeTTL time.Duration
	max         int

	mu      sync.Mutex
	entries map[string]cacheEntry
	flights map[string]*flight
}

// cacheEntry is the outcome of one fetch: a key or an Unauthorized error.
type cacheEntry struct {
	key     *publicKey
	err     error
	fetched time.Time
}

// flight is a fetch in progress; done is closed when entry is set.
type flight struct {
	done  chan struct{}
	entry cacheEntry
}

func newKeyCache(fetch func(context.Context, string) (*publicKey, error), cfg Config) *keyCache {
	return &keyCache{
		fetch:       fetch,
		clock:       cfg.Clock,
		ttl:         cfg.CacheTTL,
		negativeTTL: cfg.RefetchInterval,
		max:         cfg.CacheSize,
		entries:     map[string]cacheEntry{},
		flights:     map[string]*flight{},
	}
}

// lookup returns did's key from the cache if it was fetched less than
// maxAge ago (a cached failure: less than min(maxAge, negativeTTL)), and
// otherwise fetches it, joining a fetch of the same DID already in
// progress. The fetch runs detached from ctx, so that one caller giving up
// does not fail the others; ctx only bounds this caller's wait.
func (c *keyCache) lookup(ctx context.Context, did string, maxAge time.Duration) (*publicKey, error) {
	c.mu.Lock()
	now := c.clock.Now()
	if e, ok := c.entries[did]; ok {
		age := now.Sub(e.fetched)
		if age < maxAge && (e.err == nil || age < c.negativeTTL) {
			c.mu.Unlock()
			return e.key, e.err
		}
	}
	f, ok := c.flights[did]
	if !ok {
		f = &flight{done: make(chan struct{})}
		c.flights[did] = f
		go c.run(context.WithoutCancel(ctx), did, f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.entry.key, f.entry.err
	case <-ctx.Done():
		return nil, unavailable(ReasonResolverUnavailable, retryAfterResolver, "resolving %s: %v", did, ctx.Err())
	}
}

// run fetches did's key for flight f and caches the outcome.
func (c *keyCache) run(ctx context.Context, did string, f *flight) {
	key, err := c.fetch(ctx, did)
	c.mu.Lock()
	defer c.mu.Unlock()
	f.entry = cacheEntry{key: key, err: err, fetched: c.clock.Now()}
	delete(c.flights, did)
	close(f.done)
	if kpd.ErrorCode(err) == kpd.CodeUnavailable {
		return // keep what was known; the next lookup tries again
	}
	if _, ok := c.entries[did]; !ok && len(c.entries) >= c.max {
		c.evict(f.entry.fetched)
	}
	c.entries[did] = f.entry
}

// evict makes room: it drops expired entries and, if that frees less than
// an eighth of the cache, arbitrary ones (map order) until it does. c.mu is
// held.
func (c *keyCache) evict(now time.Time) {
	for did, e := range c.entries {
		ttl := c.ttl
		if e.err != nil {
			ttl = min(ttl, c.negativeTTL)
		}
		if now.Sub(e.fetched) >= ttl {
			delete(c.entries, did)
		}
	}
	target := c.max - max(1, c.max/8)
	for did := range c.entries {
		if len(c.entries) <= target {
			return
		}
		delete(c.entries, did)
	}
}
