package httpapi_test

import (
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/ratelimit"
)

// TestClaimDrainingStopsAtPairBurst: a loop draining one target DID is
// stopped after the pair burst with 429, RateLimited and the right
// Retry-After, while the same claimer can still claim another DID and
// another claimer the same DID.
func TestClaimDrainingStopsAtPairBurst(t *testing.T) {
	clock := testkit.NewClock(time.Unix(1_800_000_000, 0))
	rates, err := ratelimit.NewPolicy(ratelimit.Config{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, func(o *options) { o.rates = rates })
	ctx := t.Context()

	// Alice and Carol each have a device with a last resort, so every claim
	// that passes the limits succeeds.
	for _, did := range []string{alice, carol} {
		kp, _ := s.keyPackage(1, did+"#phone", true)
		must(s.as(did).Publish(ctx, "phone", [][]byte{kp}))(t)
	}
	claim := func(claimer, target string) error {
		_, err := s.as(claimer).Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: target}}})
		return err
	}

	for i := range 20 {
		if err := claim(bob, alice); err != nil {
			t.Fatalf("claim %d within the burst: %v", i+1, err)
		}
	}
	e := wantCode(t, claim(bob, alice), kpd.CodeRateLimited)
	// 10 per minute: the next token comes 6 s later.
	if e.RetryAfter != 6*time.Second {
		t.Errorf("Retry-After = %v, want 6s", e.RetryAfter)
	}
	if err := claim(bob, carol); err != nil {
		t.Errorf("another target of the same claimer: %v", err)
	}
	if err := claim(carol, alice); err != nil {
		t.Errorf("another claimer of the same target: %v", err)
	}

	clock.Advance(6 * time.Second)
	if err := claim(bob, alice); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}
	wantCode(t, claim(bob, alice), kpd.CodeRateLimited)
}

// TestPublishRateLimit: KeyPackages published per DID per hour are limited,
// charged per KeyPackage before validation, and a batch larger than the
// burst can never pass.
func TestPublishRateLimit(t *testing.T) {
	clock := testkit.NewClock(time.Unix(1_800_000_000, 0))
	rates, err := ratelimit.NewPolicy(ratelimit.Config{Clock: clock.Now, Publish: ratelimit.PerHour(3)})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, func(o *options) { o.rates = rates })
	ctx := t.Context()
	a := s.as(alice)

	kps := make([][]byte, 4)
	for i := range kps {
		kps[i], _ = s.keyPackage(1, alice+"#phone", false)
	}
	must(a.Publish(ctx, "phone", kps[:2]))(t)
	_, err = a.Publish(ctx, "phone", kps[2:4])
	e := wantCode(t, err, kpd.CodeRateLimited)
	// One KeyPackage is left of 3 per hour; the second comes in 20 minutes.
	if e.RetryAfter != 20*time.Minute {
		t.Errorf("Retry-After = %v, want 20m", e.RetryAfter)
	}
	// Other DIDs are not affected.
	bobKP, _ := s.keyPackage(1, bob+"#phone", false)
	must(s.as(bob).Publish(ctx, "phone", [][]byte{bobKP}))(t)

	_, err = a.Publish(ctx, "phone", kps)
	wantCode(t, err, kpd.CodePayloadTooLarge)

	clock.Advance(20 * time.Minute)
	must(a.Publish(ctx, "phone", kps[2:4]))(t)
	inv := must(a.Inventory(ctx, "phone", false))(t)
	if got := inv.Suites[0].Available; got != 4 {
		t.Errorf("available = %d, want 4", got)
	}
}
