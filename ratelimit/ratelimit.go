// Package ratelimit is a keyed token-bucket rate limiter with bounded
// memory, for the limits of SPEC section 7: KeyPackages published per DID,
// claims per (claimer, target DID) pair and per claimer.
//
// Each key has a bucket of Burst tokens that refills at Rate tokens per
// second; a request of cost n takes n tokens or is denied with the time
// after which n tokens will be there. A bucket is kept as the time at which
// it will be full again (the generic cell rate algorithm), in integer
// nanoseconds, so Retry-After values are exact. A full bucket carries no
// information and may be dropped; that is how memory stays bounded.
//
// Policy bundles kpd's three limits and turns a refusal into a *kpd.Error
// (RateLimited with RetryAfter, or PayloadTooLarge when waiting cannot
// help), ready for the HTTP layer.
package ratelimit

import (
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpd-dir/kpd"
)

// Never is the retryAfter of a request whose cost exceeds the limit's
// Burst: it can never be allowed, and waiting does not help. The HTTP layer
// should answer it as a request that is too large, not with 429.
const Never time.Duration = -1

// DefaultMaxKeys is the default bound on a Limiter's keys.
const DefaultMaxKeys = 100_000

// Limit is a token-bucket rate: Rate tokens per second, at most Burst at
// once.
type Limit struct {
	// Rate is the refill rate in tokens per second; it must be positive.
	Rate float64
	// Burst is the bucket size; it must be at least 1.
	Burst int
}

// PerHour is n tokens per hour with a burst of n.
func PerHour(n int) Limit { return Limit{Rate: float64(n) / 3600, Burst: n} }

// PerMinute is n tokens per minute with the given burst.
func PerMinute(n, burst int) Limit { return Limit{Rate: float64(n) / 60, Burst: burst} }

// PerSecond is n tokens per second with the given burst.
func PerSecond(n, burst int) Limit { return Limit{Rate: float64(n), Burst: burst} }

// Validate returns an error unless l has a positive, finite Rate and a
// Burst of at least 1, and a full bucket refills within a century.
func (l Limit) Validate() error {
	const century = 100 * 365 * 24 * time.Hour
	if !(l.Rate > 0) || math.IsInf(l.Rate, 0) || l.Burst < 1 || float64(l.Burst)/l.Rate > century.Seconds() {
		return fmt.Errorf("ratelimit: invalid limit %v/s burst %d (want rate > 0, burst >= 1)", l.Rate, l.Burst)
	}
	return nil
}

// String describes l, e.g. "10/min burst 20".
func (l Limit) String() string {
	for _, u := range []struct {
		name string
		per  float64
	}{{"s", 1}, {"min", 60}, {"h", 3600}} {
		if n := l.Rate * u.per; n >= 1 && n == math.Trunc(n) {
			return fmt.Sprintf("%g/%s burst %d", n, u.name, l.Burst)
		}
	}
	return fmt.Sprintf("%g/s burst %d", l.Rate, l.Burst)
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithClock sets the Limiter's time source (default time.Now).
func WithClock(c kpd.Clock) Option { return func(l *Limiter) { l.clock = c } }

// WithMaxKeys bounds the number of keys the Limiter keeps (default
// DefaultMaxKeys; values below 1 mean 1). When it is reached, keys whose
// buckets are full are dropped first, then those closest to full.
func WithMaxKeys(n int) Option { return func(l *Limiter) { l.maxKeys = max(1, n) } }

// shardCount is the number of independently locked parts of a Limiter.
const shardCount = 32

// Limiter limits requests per key. It is safe for concurrent use.
type Limiter struct {
	name    string
	limit   Limit
	clock   kpd.Clock
	maxKeys int
	// interval is the time one token takes to refill; tolerance the time a
	// full bucket takes (interval * Burst).
	interval, tolerance time.Duration
	seed                maphash.Seed
	shards              []shard
	denied              atomic.Uint64
}

// shard holds the buckets of some keys: for each key, the time at which
// its bucket will be full again. Keys are held as their 64-bit hashes
// (with the Limiter's seed), so that a bucket costs the same few dozen
// bytes whatever its key: a claim pair's key names a target DID, which may
// be up to 2 KiB long and need not exist. Two keys whose hashes collide
// would share a bucket; among the at most DefaultMaxKeys keys held that
// is vanishingly rare.
type shard struct {
	mu   sync.Mutex
	full map[uint64]time.Time
	max  int
}

// New returns a Limiter named name (the `limit` label of the
// kpd_rate_limited_total metric, e.g. "claims_per_pair"). It panics if l
// is not valid (see Limit.Validate): check configured limits first.
func New(name string, l Limit, opts ...Option) *Limiter {
	if err := l.Validate(); err != nil {
		panic(err)
	}
	lim := &Limiter{name: name, limit: l, maxKeys: DefaultMaxKeys, seed: maphash.MakeSeed()}
	for _, o := range opts {
		o(lim)
	}
	lim.interval = max(1, time.Duration(math.Round(float64(time.Second)/l.Rate)))
	lim.tolerance = lim.interval * time.Duration(l.Burst)
	n := shardCount
	if lim.maxKeys < 8*shardCount {
		n = 1 // few keys: one exact bound rather than tiny shards
	}
	lim.shards = make([]shard, n)
	for i := range lim.shards {
		// Spread maxKeys over the shards without exceeding it in total.
		lim.shards[i] = shard{full: map[uint64]time.Time{}, max: lim.maxKeys / n}
		if i < lim.maxKeys%n {
			lim.shards[i].max++
		}
	}
	return lim
}

// Name returns the Limiter's name.
func (l *Limiter) Name() string { return l.name }

// Limit returns the Limiter's limit.
func (l *Limiter) Limit() Limit { return l.limit }

// Denied returns how many requests the Limiter has denied.
func (l *Limiter) Denied() uint64 { return l.denied.Load() }

// Len returns the number of keys the Limiter holds; it never exceeds the
// WithMaxKeys bound.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.full)
		s.mu.Unlock()
	}
	return n
}

// Allow takes cost tokens from key's bucket if it has them. Otherwise it
// takes nothing and returns false and the time after which cost tokens will
// be available (Never if cost exceeds the Burst). A cost below 1 is always
// allowed and takes nothing.
func (l *Limiter) Allow(key string, cost int) (ok bool, retryAfter time.Duration) {
	if cost < 1 {
		return true, 0
	}
	if cost > l.limit.Burst {
		l.denied.Add(1)
		return false, Never
	}
	s, h := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	now := l.clock.Now()
	full, ok := s.full[h]
	if !ok || full.Before(now) {
		full = now
	}
	newFull := full.Add(time.Duration(cost) * l.interval)
	if wait := newFull.Sub(now) - l.tolerance; wait > 0 {
		l.denied.Add(1)
		return false, wait
	}
	if !ok && len(s.full) >= s.max {
		s.evict(now)
	}
	s.full[h] = newFull
	return true, 0
}

// refund gives back cost tokens taken from key by Allow.
func (l *Limiter) refund(key string, cost int) {
	s, h := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if full, ok := s.full[h]; ok {
		s.full[h] = full.Add(-time.Duration(cost) * l.interval)
	}
}

// shard returns the shard of key and the hash that stands for key in it.
func (l *Limiter) shard(key string) (*shard, uint64) {
	h := maphash.String(l.seed, key)
	return &l.shards[h%uint64(len(l.shards))], h
}

// evict makes room for at least one key, and amortizes the work by freeing
// an eighth of the shard: it drops the keys whose buckets are full at now
// and, if that is not enough, those that will be full soonest (they carry
// the least information). s.mu is held.
func (s *shard) evict(now time.Time) {
	for k, full := range s.full {
		if !full.After(now) {
			delete(s.full, k)
		}
	}
	target := s.max - max(1, s.max/8)
	if len(s.full) <= target {
		return
	}
	times := make([]time.Time, 0, len(s.full))
	for _, full := range s.full {
		times = append(times, full)
	}
	slices.SortFunc(times, time.Time.Compare)
	cutoff := times[len(times)-target-1]
	for k, full := range s.full {
		if len(s.full) <= target {
			return
		}
		if !full.After(cutoff) {
			delete(s.full, k)
		}
	}
}

// Request is one limiter check of AllowAll.
type Request struct {
	Limiter *Limiter
	Key     string
	Cost    int
}

// AllowAll takes the tokens of every request, or of none: if any request
// is denied, the tokens taken for the others are given back. It returns the
// longest retryAfter of the denied requests (Never if any can never be
// allowed) and the Name of that request's Limiter. It is atomic per bucket,
// not across buckets: a concurrent request may briefly see tokens that are
// then given back.
func AllowAll(reqs ...Request) (ok bool, retryAfter time.Duration, limit string) {
	ok = true
	taken := make([]Request, 0, len(reqs))
	for _, r := range reqs {
		allowed, wait := r.Limiter.Allow(r.Key, r.Cost)
		if allowed {
			taken = append(taken, r)
			continue
		}
		if ok || wait == Never || (retryAfter != Never && wait > retryAfter) {
			retryAfter, limit = wait, r.Limiter.name
		}
		ok = false
	}
	if !ok {
		for _, r := range taken {
			if r.Cost >= 1 {
				r.Limiter.refund(r.Key, r.Cost)
			}
		}
	}
	return ok, retryAfter, limit
}
