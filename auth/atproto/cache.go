package atproto

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
)

// keyCache caches the #atproto keys of DIDs. Concurrent lookups of one DID
// share one fetch, and fetches are drawn from one budget (a token bucket)
// whatever the DID. Failures that are the DID's own (unknown DID, bad
// document) are cached for negativeTTL; Unavailable ones are not cached.
type keyCache struct {
	fetch       func(ctx context.Context, did string) (*publicKey, error)
	clock       kpd.Clock
	log         zerolog.Logger
	ttl         time.Duration
	negativeTTL time.Duration
	max         int

	mu      sync.Mutex
	entries map[string]cacheEntry
	flights map[string]*flight
	budget  tokenBucket
}

// cacheEntry is the outcome of one fetch: a key or an Unauthorized error.
type cacheEntry struct {
	key     *publicKey
	err     error
	fetched time.Time
	// used is when a lookup last returned the entry, for eviction.
	used time.Time
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
		log:         cfg.Logger,
		ttl:         cfg.CacheTTL,
		negativeTTL: cfg.RefetchInterval,
		max:         cfg.CacheSize,
		entries:     map[string]cacheEntry{},
		flights:     map[string]*flight{},
		budget:      tokenBucket{rate: cfg.ResolveRate, burst: float64(cfg.ResolveBurst), tokens: float64(cfg.ResolveBurst)},
	}
}

// lookup returns did's key from the cache if it was fetched less than
// maxAge ago (a cached failure: less than min(maxAge, negativeTTL)), and
// otherwise fetches it, joining a fetch of the same DID already in
// progress. A new fetch needs a token of the fetch budget: without one,
// lookup fails at once with Unavailable (ReasonResolverBusy). The fetch
// runs detached from ctx, so that one caller giving up does not fail the
// others; ctx only bounds this caller's wait.
func (c *keyCache) lookup(ctx context.Context, did string, maxAge time.Duration) (*publicKey, error) {
	c.mu.Lock()
	now := c.clock.Now()
	if e, ok := c.entries[did]; ok {
		age := now.Sub(e.fetched)
		if age < maxAge && (e.err == nil || age < c.negativeTTL) {
			e.used = now
			c.entries[did] = e
			c.mu.Unlock()
			return e.key, e.err
		}
	}
	f, ok := c.flights[did]
	if !ok {
		if wait, ok := c.budget.take(now); !ok {
			c.mu.Unlock()
			c.log.Debug().Str("did", did).Msg("atproto: DID fetch budget spent; refusing the token")
			return nil, unavailable(ReasonResolverBusy, wait, msgResolverBusy)
		}
		f = &flight{done: make(chan struct{})}
		c.flights[did] = f
		go c.run(context.WithoutCancel(ctx), did, f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.entry.key, f.entry.err
	case <-ctx.Done():
		return nil, unavailable(ReasonResolverUnavailable, retryAfterResolver, msgResolverUnavailable)
	}
}

// run fetches did's key for flight f and caches the outcome.
func (c *keyCache) run(ctx context.Context, did string, f *flight) {
	key, err := c.fetch(ctx, did)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	f.entry = cacheEntry{key: key, err: err, fetched: now, used: now}
	delete(c.flights, did)
	close(f.done)
	if kpd.ErrorCode(err) == kpd.CodeUnavailable {
		return // keep what was known; the next lookup tries again
	}
	if _, ok := c.entries[did]; !ok && len(c.entries) >= c.max {
		c.evict(now)
	}
	c.entries[did] = f.entry
}

// evict makes room: it drops expired entries and, if that frees less than
// an eighth of the cache, cached failures and then the least recently used
// keys until it does. So DIDs that do not resolve, which anyone can make up
// by the thousand, do not push out the keys of real callers. c.mu is held.
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
	if len(c.entries) <= target {
		return
	}
	type candidate struct {
		did    string
		failed bool
		used   time.Time
	}
	cands := make([]candidate, 0, len(c.entries))
	for did, e := range c.entries {
		cands = append(cands, candidate{did, e.err != nil, e.used})
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		if a.failed != b.failed {
			if a.failed {
				return -1
			}
			return 1
		}
		return a.used.Compare(b.used)
	})
	for _, cand := range cands[:len(cands)-target] {
		delete(c.entries, cand.did)
	}
}

// tokenBucket holds up to burst tokens, refilled at rate a second. The
// zero time of last means "full at the first take".
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

// take takes a token at time now, or reports how long until one is there.
func (b *tokenBucket) take(now time.Time) (wait time.Duration, ok bool) {
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = min(b.burst, b.tokens+elapsed.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second)), false
}
