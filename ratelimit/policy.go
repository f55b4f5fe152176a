package ratelimit

import (
	"fmt"
	"time"

	"github.com/kpd-dir/kpd"
)

// Names of kpd's rate limits: the `limit` label of kpd_rate_limited_total
// and the start of a RateLimited error's message.
const (
	PublishPerDID    = "publish_per_did"
	ClaimsPerPair    = "claims_per_pair"
	ClaimsPerClaimer = "claims_per_claimer"
)

// Off, as a Limit of Config, turns that limit off.
var Off = Limit{Burst: -1}

// Config configures a Policy. Zero Limits take the defaults of SPEC
// section 7; Off turns a limit off.
type Config struct {
	// Publish limits the KeyPackages one DID publishes (default 1000 per
	// hour, burst 1000).
	Publish Limit
	// ClaimsPerPair limits the claims of one claimer on one target DID
	// (default 10 per minute, burst 20).
	ClaimsPerPair Limit
	// ClaimsPerClaimer limits the target DIDs one claimer claims overall
	// (default 10 per second, burst 200).
	ClaimsPerClaimer Limit
	// MaxKeys bounds each limiter's keys (default DefaultMaxKeys).
	MaxKeys int
	// Clock is the time source; nil means time.Now.
	Clock kpd.Clock
	// OnLimited, if set, is called with the limit's name for every request
	// a limit refuses (to count kpd_rate_limited_total{limit}).
	OnLimited func(limit string)
}

// Policy applies kpd's rate limits to publishes and claims. It is safe for
// concurrent use.
type Policy struct {
	publish, pairs, claimers *Limiter
	onLimited                func(string)
}

// NewPolicy returns the Policy of cfg. It fails if a non-zero Limit is not
// valid (see Limit.Validate).
func NewPolicy(cfg Config) (*Policy, error) {
	limiter := func(name string, l, def Limit) (*Limiter, error) {
		switch l {
		case Off:
			return nil, nil
		case Limit{}:
			l = def
		}
		if err := l.Validate(); err != nil {
			return nil, err
		}
		opts := []Option{WithClock(cfg.Clock)}
		if cfg.MaxKeys > 0 {
			opts = append(opts, WithMaxKeys(cfg.MaxKeys))
		}
		return New(name, l, opts...), nil
	}
	p := &Policy{onLimited: cfg.OnLimited}
	var err error
	if p.publish, err = limiter(PublishPerDID, cfg.Publish, PerHour(1000)); err != nil {
		return nil, err
	}
	if p.pairs, err = limiter(ClaimsPerPair, cfg.ClaimsPerPair, PerMinute(10, 20)); err != nil {
		return nil, err
	}
	if p.claimers, err = limiter(ClaimsPerClaimer, cfg.ClaimsPerClaimer, PerSecond(10, 200)); err != nil {
		return nil, err
	}
	return p, nil
}

// Limiters returns the Policy's limiters that are on (of publish, per
// pair, per claimer), for metrics.
func (p *Policy) Limiters() []*Limiter {
	var ls []*Limiter
	for _, l := range []*Limiter{p.publish, p.pairs, p.claimers} {
		if l != nil {
			ls = append(ls, l)
		}
	}
	return ls
}

// Publish charges n KeyPackages published by did. It fails with a
// *kpd.Error: RateLimited with RetryAfter (whole seconds, rounded up) when
// the limit is reached, or PayloadTooLarge when n exceeds the limit's burst
// and could never pass.
func (p *Policy) Publish(did string, n int) error {
	if p.publish == nil {
		return nil
	}
	return p.check(Request{Limiter: p.publish, Key: did, Cost: n})
}

// Claim charges a claim by claimer of the listed target DIDs: one token
// per target DID on each (claimer, target) pair's bucket, and one per
// target on the claimer's bucket. It takes from all buckets or from none.
// Errors as Publish.
func (p *Policy) Claim(claimer string, targets []string) error {
	perTarget := map[string]int{}
	for _, t := range targets {
		perTarget[t]++
	}
	reqs := make([]Request, 0, len(perTarget)+1)
	if p.claimers != nil {
		reqs = append(reqs, Request{Limiter: p.claimers, Key: claimer, Cost: len(targets)})
	}
	if p.pairs != nil {
		for t, n := range perTarget {
			// A DID has no spaces: the pair key is unambiguous.
			reqs = append(reqs, Request{Limiter: p.pairs, Key: claimer + " " + t, Cost: n})
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	return p.check(reqs...)
}

// check applies AllowAll to reqs and turns a denial into an error.
func (p *Policy) check(reqs ...Request) error {
	ok, wait, limit := AllowAll(reqs...)
	if ok {
		return nil
	}
	if p.onLimited != nil {
		p.onLimited(limit)
	}
	var l Limit
	for _, lim := range p.Limiters() {
		if lim.Name() == limit {
			l = lim.Limit()
		}
	}
	if wait == Never {
		return kpd.Errorf(kpd.CodePayloadTooLarge, "%s: the request needs more than the limit (%v) allows at once", limit, l)
	}
	secs := int((wait + time.Second - 1) / time.Second)
	return &kpd.Error{
		Code:       kpd.CodeRateLimited,
		Message:    fmt.Sprintf("%s: rate limit (%v) reached; retry after %d s", limit, l, secs),
		RetryAfter: secs,
	}
}
