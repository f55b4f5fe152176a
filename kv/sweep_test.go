package kv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// Retentions of the sweeper tests: distinct, so that each rule is seen to
// use its own.
const (
	testWelcomeRetention  = 5 * time.Hour
	testClaimRetention    = 10 * time.Hour
	testConsumedRetention = 20 * time.Hour
)

func sweepOptions(o *Options) {
	o.WelcomeRetention = testWelcomeRetention
	o.ClaimRetention = testClaimRetention
	o.ConsumedRetention = testConsumedRetention
}

// sweep runs a Sweep at the clock's time and fails the test on error.
func (e *env) sweep(t testing.TB) SweepStats {
	t.Helper()
	st, err := e.Sweep(e.ctx, e.clock.Now())
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	return st
}

// wantSweep fails the test unless a sweep now does exactly want (ignoring
// Transactions).
func (e *env) wantSweep(t testing.TB, want SweepStats) {
	t.Helper()
	got := e.sweep(t)
	got.Transactions = 0
	if got != want {
		t.Fatalf("at %s: sweep = %+v, want %+v", e.clock.Now().Sub(t0), got, want)
	}
}

// inExpiry reports whether the KeyPackage ref is in the expiry index.
func (e *env) inExpiry(t testing.TB, ref kpd.Ref) bool {
	t.Helper()
	rec := e.record(t, ref)
	raw, err := ref.Bytes()
	if rec == nil || err != nil {
		t.Fatalf("no KeyPackage %s: %v", ref, err)
	}
	var ok bool
	e.read(e.ctx, func(tx *txn) error {
		_, ok = tx.has(bucketExpiry, index.TimeRef(rec.NotAfter.time(), raw))
		return nil
	})
	return ok
}

// kpExpiring returns a KeyPackage that expires d from now.
func (e *env) kpExpiring(suite uint16, lastResort bool, d time.Duration) kpd.KeyPackage {
	kp := e.newKP(suite)
	kp.LastResort = lastResort
	kp.NotAfter = e.clock.Now().Add(d)
	return kp
}

func TestSweepExpiredKeyPackages(t *testing.T) {
	e := newTestDB(t, sweepOptions)
	short, long := e.kpExpiring(1, false, time.Hour), e.kpExpiring(1, false, 48*time.Hour)
	lrIdle := e.kpExpiring(2, true, time.Hour)
	lrBusy := e.kpExpiring(1, true, time.Hour)
	e.publish(t, bob, "phone", short, long, lrIdle, lrBusy)
	e.claimOne(t, alice, bob, "phone", 1) // short
	e.claimOne(t, alice, bob, "phone", 1) // long
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != lrBusy.Ref {
		t.Fatalf("claimed %s, want the last resort", got.Ref)
	}
	w := e.post(t, alice, "c", 1, lrBusy.Ref)
	fresh := e.kpExpiring(1, false, time.Hour)
	e.publish(t, bob, "phone", fresh)

	// Claims leave the expiry index alone.
	if !e.inExpiry(t, short.Ref) || !e.inExpiry(t, long.Ref) {
		t.Fatal("a claimed KeyPackage left the expiry index")
	}
	e.clock.Advance(time.Hour - time.Second)
	e.wantSweep(t, SweepStats{})
	e.clock.Advance(time.Second) // not_after reached: expired
	e.wantSweep(t, SweepStats{ExpiredKeyPackages: 3})
	// The claimed one past its not_after and the retired last resort
	// lapse: they leave the expiry index and are otherwise kept.
	for _, c := range []struct {
		name   string
		ref    kpd.Ref
		lapsed bool
	}{{"short", short.Ref, true}, {"long", long.Ref, false}, {"busy last resort", lrBusy.Ref, true}} {
		rec := e.record(t, c.ref)
		if rec == nil || rec.Lapsed != c.lapsed || e.inExpiry(t, c.ref) == c.lapsed {
			t.Errorf("%s after the sweep: %+v, in the expiry index: %v", c.name, rec, e.inExpiry(t, c.ref))
		}
	}

	_, list := e.inventory(t, bob, "phone")
	if stateOf(list, fresh.Ref) != "" || stateOf(list, lrIdle.Ref) != "" {
		t.Errorf("expired KeyPackages kept: %+v", list)
	}
	// Claimed ones are not the expiry rule's: only available ones expire.
	if stateOf(list, short.Ref) != kpd.StateClaimed {
		t.Errorf("claimed KeyPackage is %q after expiry", stateOf(list, short.Ref))
	}
	// The last resort a pending Welcome names is retired, not deleted.
	rec := e.record(t, lrBusy.Ref)
	if rec == nil || !rec.Retired {
		t.Fatalf("last resort with a pending delivery: %+v, want retired", rec)
	}
	inv, _ := e.inventory(t, bob, "phone")
	if s := suiteOf(inv, 1); s.LastResort != nil || s.Available != 0 {
		t.Errorf("suite 1 after expiry: %+v", s)
	}
	// A second sweep leaves the retired one alone.
	e.wantSweep(t, SweepStats{})
	// Its delivery can still be acknowledged, which deletes it.
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	if rec := e.record(t, lrBusy.Ref); rec != nil {
		t.Fatalf("retired last resort kept after its last delivery: %+v", rec)
	}
}

func TestSweepClaims(t *testing.T) {
	e := newTestDB(t, sweepOptions, func(o *Options) { o.WelcomeRetention = 48 * time.Hour })
	e.publishN(t, bob, "phone", 1, 3)
	idle := e.claimOne(t, alice, bob, "phone", 1).Ref
	routed := e.claimOne(t, alice, bob, "phone", 1).Ref
	w := e.post(t, alice, "c", 1, routed)
	e.clock.Advance(time.Hour)
	later := e.claimOne(t, alice, bob, "phone", 1).Ref

	e.clock.Advance(testClaimRetention - time.Hour - time.Second)
	e.wantSweep(t, SweepStats{})
	e.clock.Advance(time.Second)
	// The claim whose Welcome is pending stays; so does the later claim.
	e.wantSweep(t, SweepStats{ClaimsPurged: 1})
	if !gone(e.record(t, idle)) || gone(e.record(t, routed)) || gone(e.record(t, later)) {
		t.Fatal("wrong claims purged")
	}
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	e.wantSweep(t, SweepStats{ClaimsPurged: 1})
	inv, list := e.inventory(t, bob, "phone")
	if s := suiteOf(inv, 1); s.Claimed != 0 || len(list) != 1 || stateOf(list, routed) != kpd.StateConsumed {
		t.Fatalf("after purges: %+v %+v", s, list)
	}
}

// TestSweepExpiresDeliveries: a pending delivery past the Welcome retention
// is expired; its regular KeyPackage stays claimed until the claim
// retention, its retired last resort goes at once.
func TestSweepExpiresDeliveries(t *testing.T) {
	e := newTestDB(t, sweepOptions)
	lr := e.newLastResort(2)
	e.publish(t, bob, "phone", lr)
	e.publishN(t, bob, "phone", 1, 1)
	ref := e.claimOne(t, alice, bob, "phone", 1).Ref
	e.claimOne(t, alice, bob, "phone", 2)
	e.clock.Advance(time.Hour)
	w := e.post(t, alice, "c", 1, ref)
	wLR := e.post(t, alice, "c", 2, lr.Ref)
	e.publish(t, bob, "phone", e.newLastResort(2)) // retires lr

	e.clock.Advance(testWelcomeRetention - time.Second)
	e.wantSweep(t, SweepStats{})
	e.clock.Advance(time.Second)
	e.wantSweep(t, SweepStats{DeliveriesExpired: 2})

	st, err := e.WelcomeStatus(e.ctx, alice, w.WelcomeID)
	if err != nil || st.Recipients[0].Status != kpd.DeliveryExpired || !st.Recipients[0].UpdatedAt.Equal(e.clock.Now()) {
		t.Fatalf("status after expiry = %+v, %v", st, err)
	}
	if pw, _ := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{}); len(pw) != 0 {
		t.Fatalf("expired Welcomes still pending: %+v", pw)
	}
	_, err = e.Ack(e.ctx, bob, "phone", w.WelcomeID)
	wantCode(t, err, kpd.CodeConflict)
	if rec := e.record(t, lr.Ref); rec != nil {
		t.Fatalf("retired last resort kept after its delivery expired: %+v", rec)
	}
	if rec := e.record(t, ref); rec == nil || rec.State != kpd.StateClaimed || rec.Pending != 0 {
		t.Fatalf("KeyPackage of an expired delivery: %+v, want claimed without pending deliveries", rec)
	}
	// It cannot be routed again.
	if res := e.post(t, alice, "c2", 1, ref); len(res.Recipients) != 0 || res.Rejected[0].Reason != kpd.CodeAlreadyConsumed {
		t.Fatalf("re-route of an expired delivery's KeyPackage: %+v", res)
	}
	devs, _ := e.Devices(e.ctx, bob)
	if devs[0].PendingWelcomes != 0 {
		t.Fatalf("pending welcomes = %d", devs[0].PendingWelcomes)
	}
	// Claimed at t0: the claim retention ends at t0+10h.
	e.clock.Advance(testClaimRetention - testWelcomeRetention - time.Hour)
	e.wantSweep(t, SweepStats{ClaimsPurged: 1})
	if _, err := e.WelcomeStatus(e.ctx, alice, wLR.WelcomeID); err != nil {
		t.Fatalf("welcome of an expired delivery: %v", err)
	}
}

// TestSweepPurgesHistory: consumed metadata, finished deliveries and, once
// it has no delivery left, the Welcome go after the consumed retention,
// each counted from its own time.
func TestSweepPurgesHistory(t *testing.T) {
	e := newTestDB(t, sweepOptions)
	a := e.publishN(t, bob, "phone", 1, 1)[0]
	b := e.publishN(t, bob, "tablet", 1, 1)[0]
	e.claimOne(t, alice, bob, "phone", 1)
	e.claimOne(t, alice, bob, "tablet", 1)
	w := e.post(t, alice, "c", 1, a, b)
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	if _, err := e.Reject(e.ctx, bob, "tablet", w.WelcomeID, kpd.ReasonInvalidWelcome, "bad"); err != nil {
		t.Fatal(err)
	}

	e.clock.Advance(testConsumedRetention - time.Hour - time.Second)
	e.wantSweep(t, SweepStats{})
	e.clock.Advance(time.Second)
	e.wantSweep(t, SweepStats{ConsumedPurged: 1, DeliveriesPurged: 1})
	// The sender still sees both outcomes.
	st, err := e.WelcomeStatus(e.ctx, alice, w.WelcomeID)
	if err != nil || len(st.Recipients) != 2 || st.Recipients[0].Status != kpd.DeliveryAcked ||
		st.Recipients[1].Status != kpd.DeliveryRejected || st.Recipients[1].Detail != "bad" {
		t.Fatalf("status after the first purge = %+v, %v", st, err)
	}
	if !gone(e.record(t, a)) || gone(e.record(t, b)) {
		t.Fatal("wrong consumed KeyPackage purged")
	}

	e.clock.Advance(time.Hour)
	e.wantSweep(t, SweepStats{ConsumedPurged: 1, DeliveriesPurged: 1, WelcomesPurged: 1})
	_, err = e.WelcomeStatus(e.ctx, alice, w.WelcomeID)
	wantCode(t, err, kpd.CodeNotFound)
	stats := e.stats(t)
	if stats.Welcomes != 0 || stats.Deliveries[kpd.DeliveryAcked]+stats.Deliveries[kpd.DeliveryRejected] != 0 || len(stats.Suites) != 0 {
		t.Fatalf("stats after every purge: %+v", stats)
	}
}

// TestSweepOrphanedByDeviceDeletion: a Welcome whose only recipient device
// was deleted keeps its status for the consumed retention, then goes.
func TestSweepOrphanedByDeviceDeletion(t *testing.T) {
	e := newTestDB(t, sweepOptions)
	e.publishN(t, bob, "phone", 1, 1)
	w := e.post(t, alice, "c", 1, e.claimOne(t, alice, bob, "phone", 1).Ref)
	e.clock.Advance(time.Hour)
	if err := e.DeleteDevice(e.ctx, bob, "phone"); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(testConsumedRetention - time.Second)
	e.wantSweep(t, SweepStats{})
	if st, err := e.WelcomeStatus(e.ctx, alice, w.WelcomeID); err != nil || st.Recipients[0].Status != kpd.DeliveryExpired {
		t.Fatalf("status of a deleted device's Welcome = %+v, %v", st, err)
	}
	e.clock.Advance(time.Second)
	e.wantSweep(t, SweepStats{WelcomesPurged: 1})
}

// TestSweepBoundedBatches sweeps 35 due records 10 per transaction while
// a claim runs: the claim commits between the sweep's transactions.
func TestSweepBoundedBatches(t *testing.T) {
	obs := newRecorder()
	e := newTestDB(t, func(o *Options) { o.SweepBatchSize = 10; o.Observer = obs })
	for d := range 5 {
		kps := make([]kpd.KeyPackage, 7)
		for i := range kps {
			kps[i] = e.kpExpiring(1, false, time.Hour)
		}
		e.publish(t, bob, fmt.Sprintf("d%d", d), kps...)
	}
	e.publishN(t, carol, "phone", 1, 1)
	e.clock.Advance(time.Hour)

	// The first commit of the sweep waits until a claim has committed.
	firstCommit, release := make(chan struct{}), make(chan struct{})
	obs.onCommit(func() {
		close(firstCommit)
		<-release
	})
	type result struct {
		st  SweepStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := e.Sweep(e.ctx, e.clock.Now())
		done <- result{st, err}
	}()
	<-firstCommit
	claimed := make(chan error, 1)
	go func() {
		_, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1,
			Targets: []kpd.ClaimTarget{{DID: carol}}})
		claimed <- err
	}()
	select {
	case err := <-claimed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a claim waited for the whole sweep")
	}
	select {
	case <-done:
		t.Fatal("the sweep finished before its first commit returned")
	default:
	}
	close(release)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.st.ExpiredKeyPackages != 35 || r.st.Transactions < 4 {
		t.Fatalf("sweep = %+v, want 35 expired in at least 4 transactions", r.st)
	}
	for d := range 5 {
		inv, list := e.inventory(t, bob, fmt.Sprintf("d%d", d))
		if len(list) != 0 || suiteOf(inv, 1).Available != 0 {
			t.Fatalf("device d%d after the sweep: %+v", d, list)
		}
	}
	if s := e.stats(t); s.Suites[0].Available != 0 || s.Suites[0].Claimed != 1 {
		t.Fatalf("stats after the sweep: %+v", s.Suites)
	}
}

func TestSweepStopsWithContext(t *testing.T) {
	e := newTestDB(t, func(o *Options) { o.SweepBatchSize = 1 })
	e.publish(t, bob, "phone", e.kpExpiring(1, false, time.Hour), e.kpExpiring(1, false, time.Hour))
	e.clock.Advance(time.Hour)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	st, err := e.Sweep(ctx, e.clock.Now())
	if !errors.Is(err, context.Canceled) || st.Transactions != 0 {
		t.Fatalf("canceled sweep = %+v, %v", st, err)
	}
	// Nothing due: one transaction that finds nothing.
	e.wantSweep(t, SweepStats{ExpiredKeyPackages: 2})
	if st := e.sweep(t); st != (SweepStats{Transactions: 1}) {
		t.Fatalf("idle sweep = %+v", st)
	}
}

// gone reports whether a KeyPackage's record has left the store (nil) or
// is spent: purged but for its ref until its not_after.
func gone(r *kpRecord) bool { return r == nil || r.Spent }

// A claimed or consumed KeyPackage purged before its not_after keeps its
// ref, spent, until then: its owner re-publishing the same bytes gets
// "duplicate", and nothing else sees it (claims, Welcomes, listings, sync,
// counters). At its not_after the expiry sweep deletes it.
func TestSweepKeepsSpentRefsUntilNotAfter(t *testing.T) {
	e := newTestDB(t, sweepOptions)
	consumed, claimed := e.newKP(1), e.newKP(1)
	e.publish(t, bob, "phone", consumed, claimed)
	e.claimOne(t, alice, bob, "phone", 1)
	w := e.post(t, alice, "c", 1, consumed.Ref)
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	e.claimOne(t, carol, bob, "phone", 1)
	e.clock.Advance(testConsumedRetention)
	e.wantSweep(t, SweepStats{ConsumedPurged: 1, ClaimsPurged: 1, DeliveriesPurged: 1, WelcomesPurged: 1})
	for _, kp := range []kpd.KeyPackage{consumed, claimed} {
		if rec := e.record(t, kp.Ref); rec == nil || !rec.Spent || rec.Data != nil {
			t.Fatalf("purged %s: %+v, want spent without its bytes", kp.Ref, rec)
		}
	}

	res := e.publish(t, bob, "phone", consumed, claimed)
	if res[0].Status != kpd.PublishDuplicate || res[1].Status != kpd.PublishDuplicate {
		t.Fatalf("re-publish of spent refs: %+v, want duplicates", res)
	}
	_, _, err := e.Publish(e.ctx, bob, "tablet", []kpd.KeyPackage{consumed})
	wantCode(t, err, kpd.CodeConflict)
	got := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	if len(got.KeyPackages) != 0 {
		t.Fatalf("claimed %+v: a spent KeyPackage was handed out again", got.KeyPackages)
	}
	wantRejected(t, e, e.welcome(carol, "c2", 1, claimed.Ref), kpd.CodeUnknownKeyPackage)
	inv, list := e.inventory(t, bob, "phone")
	if s := suiteOf(inv, 1); s.Available != 0 || s.Claimed != 0 || len(list) != 0 {
		t.Fatalf("inventory with spent refs: %+v %+v, want nothing", s, list)
	}
	sync, err := e.Sync(e.ctx, bob, "phone", []kpd.Ref{consumed.Ref, claimed.Ref})
	if err != nil || len(sync.Unknown) != 2 || len(sync.Pending) != 0 || len(sync.Deleted) != 0 {
		t.Fatalf("sync naming spent refs: %+v, %v; want both unknown", sync, err)
	}
	if st := e.stats(t); len(st.Suites) != 0 {
		t.Fatalf("stats count spent KeyPackages: %+v", st.Suites)
	}

	e.clock.Set(consumed.NotAfter)
	e.wantSweep(t, SweepStats{})
	for _, kp := range []kpd.KeyPackage{consumed, claimed} {
		if rec := e.record(t, kp.Ref); rec != nil {
			t.Fatalf("spent %s kept past its not_after: %+v", kp.Ref, rec)
		}
	}
}

// bigWelcome posts a Welcome of size bytes from alice naming refs, and
// returns its ID.
func (e *env) bigWelcome(t *testing.T, size int, refs ...kpd.Ref) string {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	res, err := e.PostWelcome(e.ctx, kpd.Welcome{ID: kpd.WelcomeID(data), ConvoID: "c", Sender: alice, CipherSuite: 1, Data: data, Refs: refs})
	if err != nil || len(res.Recipients) != len(refs) {
		t.Fatalf("post welcome: %+v, %v", res, err)
	}
	return res.WelcomeID
}

// TestSweepBoundsWelcomeRewrites: purging a finished delivery rewrites its
// Welcome, bytes included, so a sweep transaction stops once it has
// rewritten sweepWelcomeBytes of Welcomes (here 4 of 3 MiB: two
// transactions, not one); and a Welcome with many purged deliveries is
// rewritten once per transaction, not once per delivery (10 deliveries of
// one Welcome of 3 MiB: one transaction).
func TestSweepBoundsWelcomeRewrites(t *testing.T) {
	e := newTestDB(t, sweepOptions)
	const size = 3 << 20
	var single []string // Welcome IDs
	for i := range 4 {
		device := fmt.Sprintf("d%d", i)
		ref := e.publishN(t, bob, device, 1, 1)[0]
		e.claimOne(t, alice, bob, device, 1)
		id := e.bigWelcome(t, size, ref)
		if _, err := e.Ack(e.ctx, bob, device, id); err != nil {
			t.Fatal(err)
		}
		single = append(single, id)
	}
	var refs []kpd.Ref
	for i := range 10 {
		device := fmt.Sprintf("m%d", i)
		refs = append(refs, e.publishN(t, carol, device, 1, 1)[0])
		e.claimOne(t, alice, carol, device, 1)
	}
	e.clock.Advance(time.Hour)
	many := e.bigWelcome(t, size, refs...)
	for i := range refs {
		if _, err := e.Ack(e.ctx, carol, fmt.Sprintf("m%d", i), many); err != nil {
			t.Fatal(err)
		}
	}

	// The Welcomes' last deliveries ended a consumed retention ago, so
	// each sweep also purges the Welcomes it orphans: every delivery's
	// end must be in its Welcome's record for that.
	e.clock.Advance(testConsumedRetention - time.Hour)
	st := e.sweep(t)
	if st.DeliveriesPurged != 4 || st.WelcomesPurged != 4 || st.Transactions != 2 {
		t.Errorf("sweep of 4 Welcomes of 3 MiB: %+v; want 4 deliveries and 4 Welcomes purged in 2 transactions", st)
	}
	e.clock.Advance(time.Hour)
	st = e.sweep(t)
	if st.DeliveriesPurged != 10 || st.WelcomesPurged != 1 || st.Transactions != 1 {
		t.Errorf("sweep of one Welcome of 3 MiB to 10 devices: %+v; want 10 deliveries and the Welcome purged in 1 transaction", st)
	}
	for _, id := range append(single, many) {
		_, err := e.WelcomeStatus(e.ctx, alice, id)
		wantCode(t, err, kpd.CodeNotFound)
	}
}
