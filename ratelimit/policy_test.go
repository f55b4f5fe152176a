package ratelimit

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
)

func newPolicy(t *testing.T, cfg Config) (*Policy, *testkit.Clock, map[string]int) {
	t.Helper()
	c := newClock()
	var mu sync.Mutex
	limited := map[string]int{}
	cfg.Clock = c.Now
	cfg.OnLimited = func(limit string) {
		mu.Lock()
		defer mu.Unlock()
		limited[limit]++
	}
	p, err := NewPolicy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, c, limited
}

func wantLimited(t *testing.T, err error, code kpd.Code, limit string, retryAfter int) {
	t.Helper()
	var e *kpd.Error
	if kpd.ErrorCode(err) != code || !strings.HasPrefix(kpd.ErrorMessage(err), limit+": ") {
		t.Fatalf("error = %v; want %s from %s", err, code, limit)
	}
	if e, _ = err.(*kpd.Error); e.RetryAfter != retryAfter {
		t.Fatalf("RetryAfter = %d, want %d (%v)", e.RetryAfter, retryAfter, err)
	}
}

func TestPolicyDefaults(t *testing.T) {
	p, _, _ := newPolicy(t, Config{})
	want := []Limit{PerHour(1000), PerMinute(10, 20), PerSecond(10, 200)}
	for i, l := range p.Limiters() {
		if l.Limit() != want[i] || l.Len() != 0 {
			t.Errorf("%s: %v, want %v", l.Name(), l.Limit(), want[i])
		}
	}
	if _, err := NewPolicy(Config{ClaimsPerPair: Limit{Rate: 1}}); err == nil {
		t.Error("a limit with burst 0 was accepted")
	}
}

func TestPolicyClaimDraining(t *testing.T) {
	p, c, limited := newPolicy(t, Config{})
	// Mallory claims Alice's KeyPackages in a loop, along with Bob's.
	for range 20 {
		if err := p.Claim("did:plc:mallory", []string{"did:plc:alice"}); err != nil {
			t.Fatal(err)
		}
	}
	err := p.Claim("did:plc:mallory", []string{"did:plc:bob", "did:plc:alice"})
	wantLimited(t, err, kpd.CodeRateLimited, ClaimsPerPair, 6)
	if !strings.Contains(err.Error(), "10/min burst 20") {
		t.Errorf("message %q does not name the limit", err)
	}
	// Bob's pair bucket was not charged by the refused claim: 20 more pass.
	for range 20 {
		if err := p.Claim("did:plc:mallory", []string{"did:plc:bob"}); err != nil {
			t.Fatal(err)
		}
	}
	// Others may still claim Alice's.
	if err := p.Claim("did:plc:carol", []string{"did:plc:alice"}); err != nil {
		t.Fatal(err)
	}
	c.Advance(6 * time.Second)
	if err := p.Claim("did:plc:mallory", []string{"did:plc:alice"}); err != nil {
		t.Fatal(err)
	}
	if limited[ClaimsPerPair] != 1 || len(limited) != 1 {
		t.Fatalf("OnLimited calls: %v", limited)
	}
}

func TestPolicyClaimerLimit(t *testing.T) {
	p, c, limited := newPolicy(t, Config{})
	targets := make([]string, 100)
	for i := range targets {
		targets[i] = "did:web:t" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example.com"
	}
	for range 2 {
		if err := p.Claim("did:plc:mallory", targets); err != nil {
			t.Fatal(err)
		}
	}
	// 200 targets in a second; 100 more need 10 s.
	wantLimited(t, p.Claim("did:plc:mallory", targets), kpd.CodeRateLimited, ClaimsPerClaimer, 10)
	c.Advance(150 * time.Millisecond) // 1.5 tokens back
	wantLimited(t, p.Claim("did:plc:mallory", targets[:2]), kpd.CodeRateLimited, ClaimsPerClaimer, 1)
	if limited[ClaimsPerClaimer] != 2 {
		t.Fatalf("OnLimited calls: %v", limited)
	}
	// More targets than the burst can never pass.
	many := make([]string, 201)
	for i := range many {
		many[i] = targets[i%100]
	}
	p2, _, _ := newPolicy(t, Config{})
	wantLimited(t, p2.Claim("did:plc:carol", many), kpd.CodePayloadTooLarge, ClaimsPerClaimer, 0)
}

func TestPolicyPublish(t *testing.T) {
	p, c, limited := newPolicy(t, Config{})
	for range 10 {
		if err := p.Publish("did:plc:alice", 100); err != nil {
			t.Fatal(err)
		}
	}
	// One KeyPackage needs 3.6 s: Retry-After rounds up.
	wantLimited(t, p.Publish("did:plc:alice", 1), kpd.CodeRateLimited, PublishPerDID, 4)
	wantLimited(t, p.Publish("did:plc:alice", 100), kpd.CodeRateLimited, PublishPerDID, 360)
	if err := p.Publish("did:plc:bob", 100); err != nil {
		t.Fatal(err)
	}
	c.Advance(360 * time.Second)
	if err := p.Publish("did:plc:alice", 100); err != nil {
		t.Fatal(err)
	}
	if limited[PublishPerDID] != 2 {
		t.Fatalf("OnLimited calls: %v", limited)
	}
	small, _, _ := newPolicy(t, Config{Publish: PerHour(50)})
	wantLimited(t, small.Publish("did:plc:alice", 51), kpd.CodePayloadTooLarge, PublishPerDID, 0)
}
