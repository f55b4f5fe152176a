package kv

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

func TestClaimFIFOThenLastResort(t *testing.T) {
	e := newTestDB(t)
	first := e.publishN(t, bob, "phone", 1, 3)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	second := e.publishN(t, bob, "phone", 1, 2)
	order := append(first, second...)

	for i, want := range order {
		e.clock.Advance(time.Second)
		got := e.claimOne(t, alice, bob, "phone", 1)
		if got.Ref != want || got.LastResort || got.DID != bob || got.Device != "phone" || got.CipherSuite != 1 || len(got.KeyPackage) == 0 {
			t.Fatalf("claim %d = %+v, want %s", i, got, want)
		}
	}
	_, list := e.inventory(t, bob, "phone")
	for _, info := range list {
		if info.LastResort {
			continue
		}
		if info.State != kpd.StateClaimed || info.ClaimedAt == nil || info.ClaimedAt.Before(t0) {
			t.Errorf("%s: %s claimed at %v", info.Ref, info.State, info.ClaimedAt)
		}
	}
	if rec := e.record(t, order[0]); rec.Claimer != alice || rec.ClaimedAt.time() != t0.Add(time.Second) {
		t.Errorf("claim record: claimer %q at %v", rec.Claimer, rec.ClaimedAt.time())
	}

	// The pool is empty: the last resort is served, counted, and stays.
	for i := 1; i <= 3; i++ {
		got := e.claimOne(t, carol, bob, "phone", 1)
		if got.Ref != lr.Ref || !got.LastResort {
			t.Fatalf("claim from an empty pool = %+v, want the last resort", got)
		}
		inv, _ := e.inventory(t, bob, "phone")
		if s := suiteOf(inv, 1); s.LastResort == nil || s.LastResort.Served != int64(i) || s.Available != 0 || s.Claimed != 5 {
			t.Fatalf("after serving the last resort %d times: %+v", i, s)
		}
	}
}

func TestClaimMissing(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 1)
	e.publishN(t, bob, "tablet", 2, 1)
	e.claimOne(t, alice, bob, "phone", 1)

	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{
		{DID: bob},
		{DID: carol},
		{DID: bob, Devices: []string{"watch"}},
		{DID: carol},
	}})
	want := []kpd.Missing{
		{DID: bob, Device: "phone", Reason: kpd.CodeExhausted},
		{DID: bob, Device: "tablet", Reason: kpd.CodeNoKeyPackages},
		{DID: carol, Reason: kpd.CodeNoKeyPackages},
		{DID: bob, Device: "watch", Reason: kpd.CodeNoKeyPackages},
	}
	if len(res.KeyPackages) != 0 || !slices.Equal(res.Missing, want) {
		t.Fatalf("claim = %+v, want missing %+v", res, want)
	}
}

func TestClaimTargets(t *testing.T) {
	e := newTestDB(t)
	for _, d := range []string{"a", "b", "c"} {
		e.publishN(t, alice, d, 1, 2)
		e.publishN(t, bob, d, 1, 2)
	}
	// Alice's device "a" adds her other devices and all of Bob's; Bob's
	// device "a" is not excluded: exclusion is about the claimer's own DID.
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, ExcludeDevices: []string{"a"},
		Targets: []kpd.ClaimTarget{{DID: alice}, {DID: bob}, {DID: bob, Devices: []string{"b", "b"}}}})
	var got []string
	for _, kp := range res.KeyPackages {
		got = append(got, kp.DID+"/"+kp.Device)
	}
	want := []string{alice + "/b", alice + "/c", bob + "/a", bob + "/b", bob + "/c"}
	if !slices.Equal(got, want) || len(res.Missing) != 0 {
		t.Fatalf("claimed from %v (missing %v), want one each from %v", got, res.Missing, want)
	}
	inv, _ := e.inventory(t, bob, "b")
	if s := suiteOf(inv, 1); s.Claimed != 1 || s.Available != 1 {
		t.Fatalf("a device named twice gave %d KeyPackages", s.Claimed)
	}
	inv, _ = e.inventory(t, alice, "a")
	if s := suiteOf(inv, 1); s.Claimed != 0 {
		t.Fatal("an excluded device was claimed from")
	}
	// Excluding every device of one's own DID leaves nothing missing.
	res = e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, ExcludeDevices: []string{"a", "b", "c"},
		Targets: []kpd.ClaimTarget{{DID: alice}}})
	if len(res.KeyPackages) != 0 || len(res.Missing) != 0 {
		t.Fatalf("claim of only excluded devices: %+v", res)
	}
	_, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: "nope"}}})
	wantCode(t, err, kpd.CodeBadRequest)
}

func TestClaimAllOrNothing(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 2)
	e.publish(t, bob, "tablet", e.newKP(2))

	_, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, AllOrNothing: true,
		Targets: []kpd.ClaimTarget{{DID: bob}, {DID: carol}}})
	ke := wantCode(t, err, kpd.CodeConflict)
	want := []kpd.Missing{{DID: bob, Device: "tablet", Reason: kpd.CodeNoKeyPackages}, {DID: carol, Reason: kpd.CodeNoKeyPackages}}
	if !slices.Equal(ke.Missing, want) {
		t.Fatalf("missing = %+v, want %+v", ke.Missing, want)
	}
	inv, _ := e.inventory(t, bob, "phone")
	if s := suiteOf(inv, 1); s.Available != 2 || s.Claimed != 0 {
		t.Fatalf("all_or_nothing claimed something: %+v", s)
	}
	// Satisfiable: claims.
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, AllOrNothing: true,
		Targets: []kpd.ClaimTarget{{DID: bob, Devices: []string{"phone"}}}})
	if len(res.KeyPackages) != 1 {
		t.Fatalf("satisfiable all_or_nothing claim: %+v", res)
	}
}

func TestClaimNeverReturnsExpired(t *testing.T) {
	e := newTestDB(t)
	short := e.newKP(1)
	short.NotAfter = t0.Add(time.Hour)
	long := e.newKP(1)
	lr := e.newLastResort(1)
	lr.NotAfter = t0.Add(2 * time.Hour)
	e.publish(t, bob, "phone", short, long, lr)

	e.clock.Advance(time.Hour) // exactly at short's not_after: expired
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != long.Ref {
		t.Fatalf("claimed %s, want %s (the other expired)", got.Ref, long.Ref)
	}
	// The expired one was deleted in the claim's transaction.
	inv, list := e.inventory(t, bob, "phone")
	if stateOf(list, short.Ref) != "" || suiteOf(inv, 1).Available != 0 {
		t.Fatalf("expired KeyPackage kept: %+v", list)
	}
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != lr.Ref {
		t.Fatalf("claimed %s, want the last resort", got.Ref)
	}
	e.clock.Advance(time.Hour) // the last resort expired too
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	if len(res.KeyPackages) != 0 || len(res.Missing) != 1 || res.Missing[0].Reason != kpd.CodeExhausted {
		t.Fatalf("claim with only expired KeyPackages: %+v", res)
	}
	// An all_or_nothing miss leaves expired ones for a later claim or sweep,
	// but never hands them out.
	late := e.newKP(1)
	late.NotAfter = e.clock.Now().Add(time.Minute)
	e.publish(t, bob, "phone", late)
	e.clock.Advance(time.Minute)
	_, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, AllOrNothing: true, Targets: []kpd.ClaimTarget{{DID: bob}}})
	wantCode(t, err, kpd.CodeConflict)
}

// TestConcurrentClaims claims from one pool from 64 goroutines: each
// regular KeyPackage is handed out exactly once, then only the last resort.
func TestConcurrentClaims(t *testing.T) {
	e := newTestDB(t, func(o *Options) { o.MaxBatchDelay = time.Millisecond })
	const pool, workers, perWorker = 150, 64, 4
	refs := e.publishN(t, bob, "phone", 1, pool)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)

	var (
		mu     sync.Mutex
		counts = map[kpd.Ref]int{}
		wg     sync.WaitGroup
		errs   = make(chan error, workers)
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				res, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: fmt.Sprintf("did:plc:w%d", w), CipherSuite: 1,
					Targets: []kpd.ClaimTarget{{DID: bob}}})
				if err != nil || len(res.KeyPackages) != 1 {
					errs <- fmt.Errorf("claim: %+v, %v", res, err)
					return
				}
				mu.Lock()
				counts[res.KeyPackages[0].Ref]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, r := range refs {
		if counts[r] != 1 {
			t.Errorf("%s handed out %d times, want once", r, counts[r])
		}
	}
	served := workers*perWorker - pool
	if counts[lr.Ref] != served || len(counts) != pool+1 {
		t.Errorf("last resort handed out %d times (%d distinct refs), want %d", counts[lr.Ref], len(counts), served)
	}
	inv, _ := e.inventory(t, bob, "phone")
	if s := suiteOf(inv, 1); s.Available != 0 || s.Claimed != pool || s.LastResort.Served != int64(served) {
		t.Errorf("inventory = %+v, last resort %+v", s, s.LastResort)
	}
}

// TestClaimAdvancesHead: a claim moves its pool's head past the records it
// read (the claimed one, last resorts and expired ones on the way), so
// the next claim seeks past the claimed KeyPackages; a publish leaves the
// head where it is.
func TestClaimAdvancesHead(t *testing.T) {
	e := newTestDB(t)
	first := e.publishN(t, bob, "phone", 1, 2)                                        // seqs 1, 2
	e.publish(t, bob, "phone", e.newLastResort(1), e.kpExpiring(1, false, time.Hour)) // 3, 4
	last := e.publishN(t, bob, "phone", 1, 1)[0]                                      // 5
	wantHead := func(after string, head uint64) {
		t.Helper()
		if got := e.heads(t, bob, "phone")[1]; got != head {
			t.Fatalf("after %s: head %d, want %d", after, got, head)
		}
	}
	wantClaim := func(want kpd.Ref, head uint64) {
		t.Helper()
		if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != want {
			t.Fatalf("claimed %s, want %s", got.Ref, want)
		}
		wantHead("claiming "+string(want), head)
	}
	wantHead("publishing", 0)
	wantClaim(first[0], 2)
	wantClaim(first[1], 3)
	e.clock.Advance(2 * time.Hour)
	wantClaim(last, 6)
	if lr := e.claimOne(t, alice, bob, "phone", 1); !lr.LastResort {
		t.Fatalf("claim from an empty pool = %+v, want the last resort", lr)
	}
	wantHead("serving the last resort", 6)
	kp := e.newKP(1)
	e.publish(t, bob, "phone", kp) // 6
	wantHead("publishing again", 6)
	wantClaim(kp.Ref, 7)
}

// A KeyPackage whose lifetime has not begun yet (publish accepts a
// not_before up to the clock-skew allowance ahead) is not handed out: the
// claim takes the next one, or the last resort, and later claims take it
// once it is valid, in publish order.
func TestClaimSkipsKeyPackagesNotValidYet(t *testing.T) {
	e := newTestDB(t)
	now := e.clock.Now()
	early, valid := e.newKP(1), e.newKP(1)
	early.NotBefore = now.Add(30 * time.Minute)
	e.publish(t, bob, "phone", early, valid)
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != valid.Ref {
		t.Fatalf("claimed %s, want the valid %s", got.Ref, valid.Ref)
	}
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	if len(res.KeyPackages) != 0 || len(res.Missing) != 1 || res.Missing[0].Reason != kpd.CodeExhausted {
		t.Fatalf("claim with only a KeyPackage not valid yet: %+v, want Exhausted", res)
	}

	lr := e.newLastResort(1)
	lr.NotBefore = now.Add(10 * time.Minute)
	e.publish(t, bob, "phone", lr)
	res = e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	if len(res.KeyPackages) != 0 {
		t.Fatalf("handed out %+v: a last resort not valid yet", res.KeyPackages)
	}
	e.clock.Advance(10 * time.Minute)
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != lr.Ref {
		t.Fatalf("claimed %s, want the last resort %s now valid", got.Ref, lr.Ref)
	}
	later := e.newKP(1)
	e.publish(t, bob, "phone", later)
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != later.Ref {
		t.Fatalf("claimed %s, want %s, valid before the early one", got.Ref, later.Ref)
	}
	e.clock.Advance(20 * time.Minute)
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != early.Ref {
		t.Fatalf("claimed %s, want the early one %s now valid", got.Ref, early.Ref)
	}
}
