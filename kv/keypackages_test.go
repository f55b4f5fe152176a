package kv

import (
	"slices"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

func TestPublishAndInventory(t *testing.T) {
	e := newTestDB(t)
	lr := e.newLastResort(1)
	kps := []kpd.KeyPackage{e.newKP(1), e.newKP(2), e.newKP(1), lr, e.newKP(1)}
	res, inv, err := e.Publish(e.ctx, bob, "phone", kps)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Ref != kps[i].Ref || r.Status != kpd.PublishStored || r.CipherSuite != kps[i].CipherSuite ||
			r.LastResort != kps[i].LastResort || !r.NotAfter.Equal(kps[i].NotAfter) {
			t.Errorf("result %d = %+v, want stored %s", i, r, kps[i].Ref)
		}
	}
	if inv.Device != "phone" || inv.LowWatermark != DefaultLowWatermark || len(inv.Suites) != 2 {
		t.Fatalf("inventory = %+v", inv)
	}
	s1, s2 := inv.Suites[0], inv.Suites[1]
	if s1.CipherSuite != 1 || s1.Available != 3 || s1.Claimed != 0 || s1.LastResort == nil ||
		s1.LastResort.Ref != lr.Ref || !s1.LastResort.NotAfter.Equal(lr.NotAfter) || s1.LastResort.Served != 0 {
		t.Errorf("suite 1 = %+v (last resort %+v)", s1, s1.LastResort)
	}
	if s2.CipherSuite != 2 || s2.Available != 1 || s2.LastResort != nil {
		t.Errorf("suite 2 = %+v", s2)
	}

	_, list := e.inventory(t, bob, "phone")
	if len(list) != len(kps) {
		t.Fatalf("listed %d KeyPackages, want %d", len(list), len(kps))
	}
	for i, info := range list {
		if info.Ref != kps[i].Ref || info.State != kpd.StateAvailable || !info.PublishedAt.Equal(t0) ||
			info.ClaimedAt != nil || info.LastResort != kps[i].LastResort {
			t.Errorf("listing %d = %+v, want %s available in publish order", i, info, kps[i].Ref)
		}
	}
	if _, _, err := e.Inventory(e.ctx, bob, "tablet", false); err == nil {
		t.Fatal("inventory of an unknown device succeeded")
	} else {
		wantCode(t, err, kpd.CodeNotFound)
	}
}

func TestPublishDuplicateIsNoOp(t *testing.T) {
	e := newTestDB(t)
	a, b := e.newKP(1), e.newKP(1)
	e.publish(t, bob, "phone", a)

	// Retried batch: a is a duplicate, b new, b again a duplicate.
	res := e.publish(t, bob, "phone", a, b, b)
	want := []kpd.PublishStatus{kpd.PublishDuplicate, kpd.PublishStored, kpd.PublishDuplicate}
	for i, r := range res {
		if r.Status != want[i] || r.Ref != []kpd.Ref{a.Ref, b.Ref, b.Ref}[i] {
			t.Errorf("result %d = %+v, want %s", i, r, want[i])
		}
	}
	inv, _ := e.inventory(t, bob, "phone")
	if got := suiteOf(inv, 1).Available; got != 2 {
		t.Fatalf("available = %d after a retried batch, want 2", got)
	}

	// Once claimed, re-publishing is still a no-op: it stays claimed.
	claimed := e.claimOne(t, alice, bob, "phone", 1)
	res = e.publish(t, bob, "phone", kpd.KeyPackage{Ref: claimed.Ref, CipherSuite: 1, Data: []byte{1}})
	if res[0].Status != kpd.PublishDuplicate {
		t.Fatalf("re-publishing a claimed KeyPackage: %s", res[0].Status)
	}
	inv, list := e.inventory(t, bob, "phone")
	if s := suiteOf(inv, 1); s.Available != 1 || s.Claimed != 1 || stateOf(list, claimed.Ref) != kpd.StateClaimed {
		t.Fatalf("after re-publishing a claimed KeyPackage: %+v, state %s", s, stateOf(list, claimed.Ref))
	}
}

func TestPublishConflict(t *testing.T) {
	e := newTestDB(t)
	taken := e.newKP(1)
	e.publish(t, alice, "laptop", taken)

	// Another DID: the whole batch fails and names the conflicting item.
	_, _, err := e.Publish(e.ctx, bob, "phone", []kpd.KeyPackage{e.newKP(1), taken, e.newKP(1)})
	ke := wantCode(t, err, kpd.CodeConflict)
	if len(ke.Items) != 1 || ke.Items[0].Index != 1 || ke.Items[0].Code != kpd.CodeConflict {
		t.Fatalf("items = %+v, want index 1", ke.Items)
	}
	if _, _, err := e.Inventory(e.ctx, bob, "phone", false); err == nil {
		t.Fatal("a refused batch created the device")
	}

	// Another device of the same DID.
	_, _, err = e.Publish(e.ctx, alice, "phone", []kpd.KeyPackage{taken})
	wantCode(t, err, kpd.CodeConflict)

	// A consumed KeyPackage's ref stays taken.
	e.claimOne(t, carol, alice, "laptop", 1)
	w := e.post(t, carol, "c", 1, taken.Ref)
	if _, err := e.Ack(e.ctx, alice, "laptop", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.Publish(e.ctx, bob, "phone", []kpd.KeyPackage{taken})
	wantCode(t, err, kpd.CodeConflict)
	if res := e.publish(t, alice, "laptop", taken); res[0].Status != kpd.PublishDuplicate {
		t.Fatalf("owner re-publishing its consumed KeyPackage: %s, want duplicate", res[0].Status)
	}
}

func TestPublishQuotas(t *testing.T) {
	e := newTestDB(t, func(o *Options) { o.MaxAvailablePerSuite = 3; o.MaxDevicesPerDID = 2 })
	e.publishN(t, bob, "phone", 1, 2)
	_, _, err := e.Publish(e.ctx, bob, "phone", []kpd.KeyPackage{e.newKP(1), e.newKP(1)})
	wantCode(t, err, kpd.CodeQuotaExceeded)
	inv, _ := e.inventory(t, bob, "phone")
	if got := suiteOf(inv, 1).Available; got != 2 {
		t.Fatalf("available = %d after a refused batch, want 2", got)
	}
	// Up to the limit, other suites and last resorts are fine.
	e.publish(t, bob, "phone", e.newKP(1), e.newLastResort(1), e.newKP(2), e.newKP(2), e.newKP(2))
	// Claiming makes room.
	e.claimOne(t, alice, bob, "phone", 1)
	e.publish(t, bob, "phone", e.newKP(1))

	e.publishN(t, bob, "tablet", 1, 1)
	_, _, err = e.Publish(e.ctx, bob, "desktop", []kpd.KeyPackage{e.newKP(1)})
	wantCode(t, err, kpd.CodeQuotaExceeded)
	e.publishN(t, bob, "tablet", 1, 1) // existing devices keep publishing
	e.publishN(t, alice, "phone", 1, 1)
}

func TestPublishBadRequest(t *testing.T) {
	e := newTestDB(t)
	bad := []kpd.KeyPackage{
		{Ref: "zz", CipherSuite: 1, Data: []byte{1}},
		{Ref: randRef(), CipherSuite: 1},
		{Ref: randRef(), CipherSuite: 1, Data: []byte{1}, DID: alice},
	}
	_, _, err := e.Publish(e.ctx, bob, "phone", append([]kpd.KeyPackage{e.newKP(1)}, bad...))
	ke := wantCode(t, err, kpd.CodeBadRequest)
	if len(ke.Items) != 3 || ke.Items[0].Index != 1 || ke.Items[2].Index != 3 {
		t.Fatalf("items = %+v", ke.Items)
	}
	// One last resort per suite and batch (the same one twice is a retry).
	lr := e.newLastResort(1)
	_, _, err = e.Publish(e.ctx, bob, "phone", []kpd.KeyPackage{lr, e.newLastResort(2), lr, e.newLastResort(1)})
	ke = wantCode(t, err, kpd.CodeBadRequest)
	if len(ke.Items) != 1 || ke.Items[0].Index != 3 {
		t.Fatalf("items = %+v, want index 3", ke.Items)
	}
	_, _, err = e.Publish(e.ctx, "bob", "phone", []kpd.KeyPackage{e.newKP(1)})
	wantCode(t, err, kpd.CodeBadRequest)
	_, _, err = e.Publish(e.ctx, bob, "my phone", []kpd.KeyPackage{e.newKP(1)})
	wantCode(t, err, kpd.CodeBadRequest)
}

func TestLastResortReplacement(t *testing.T) {
	e := newTestDB(t)
	lr1, lr2, lr3 := e.newLastResort(1), e.newLastResort(1), e.newLastResort(1)
	e.publish(t, bob, "phone", lr1)
	e.publish(t, bob, "phone", lr2)
	inv, list := e.inventory(t, bob, "phone")
	if lr := suiteOf(inv, 1).LastResort; lr == nil || lr.Ref != lr2.Ref {
		t.Fatalf("last resort = %+v, want %s", lr, lr2.Ref)
	}
	if len(list) != 1 {
		t.Fatalf("the replaced last resort without pending Welcomes was kept: %+v", list)
	}

	// lr2 is served and a Welcome made with it is pending when lr3 replaces it.
	got := e.claimOne(t, alice, bob, "phone", 1)
	if got.Ref != lr2.Ref || !got.LastResort {
		t.Fatalf("claimed %+v, want last resort %s", got, lr2.Ref)
	}
	w := e.post(t, alice, "c1", 1, lr2.Ref)
	e.publish(t, bob, "phone", lr3)

	// lr2 is retired: listed, but neither the slot's last resort nor served.
	inv, list = e.inventory(t, bob, "phone")
	if lr := suiteOf(inv, 1).LastResort; lr == nil || lr.Ref != lr3.Ref {
		t.Fatalf("last resort = %+v, want %s", lr, lr3.Ref)
	}
	if stateOf(list, lr2.Ref) != kpd.StateAvailable {
		t.Fatalf("retired last resort with a pending Welcome was deleted: %+v", list)
	}
	if got := e.claimOne(t, carol, bob, "phone", 1); got.Ref != lr3.Ref {
		t.Fatalf("claimed %s, want the new last resort %s", got.Ref, lr3.Ref)
	}
	// Neither delete nor sync may take it while its Welcome is pending.
	if n, _, err := e.DeleteKeyPackages(e.ctx, bob, "phone", []kpd.Ref{lr2.Ref}); err != nil || n != 0 {
		t.Fatalf("delete of a retired last resort: %d, %v", n, err)
	}
	// New Welcomes find it unknown, as if it had gone, and leave it as it
	// was; the new last resort takes them.
	wantRejected(t, e, e.welcome(carol, "c2", 1, lr2.Ref), kpd.CodeUnknownKeyPackage)
	if rec := e.record(t, lr2.Ref); rec.Pending != 1 || !rec.Retired {
		t.Fatalf("retired last resort after a refused Welcome: %+v", rec)
	}
	if w3 := e.post(t, carol, "c3", 1, lr3.Ref); len(w3.Recipients) != 1 {
		t.Fatalf("Welcome for the new last resort: %+v", w3)
	}
	// The pending Welcome can still be acknowledged; then lr2 goes.
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	_, list = e.inventory(t, bob, "phone")
	if stateOf(list, lr2.Ref) != "" {
		t.Fatalf("retired last resort kept after its last delivery: %+v", list)
	}
}

func TestDeleteKeyPackages(t *testing.T) {
	e := newTestDB(t)
	refs := e.publishN(t, bob, "phone", 1, 3)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	other := e.publishN(t, bob, "tablet", 1, 1)
	claimed := e.claimOne(t, alice, bob, "phone", 1) // refs[0]

	n, inv, err := e.DeleteKeyPackages(e.ctx, bob, "phone", []kpd.Ref{claimed.Ref, refs[1], other[0], randRef(), "nothex"})
	if err != nil || n != 1 {
		t.Fatalf("delete listed: %d, %v; want 1", n, err)
	}
	if s := suiteOf(inv, 1); s.Available != 1 || s.Claimed != 1 || s.LastResort == nil {
		t.Fatalf("inventory after delete = %+v", s)
	}

	// nil: every available one, last resort included; never the claimed one.
	n, inv, err = e.DeleteKeyPackages(e.ctx, bob, "phone", nil)
	if err != nil || n != 2 {
		t.Fatalf("delete all: %d, %v; want 2", n, err)
	}
	if s := suiteOf(inv, 1); s.Available != 0 || s.Claimed != 1 || s.LastResort != nil {
		t.Fatalf("inventory after delete all = %+v", s)
	}
	_, list := e.inventory(t, bob, "phone")
	if len(list) != 1 || list[0].Ref != claimed.Ref || list[0].State != kpd.StateClaimed {
		t.Fatalf("left after delete all: %+v", list)
	}
	if inv, _ := e.inventory(t, bob, "tablet"); suiteOf(inv, 1).Available != 1 {
		t.Fatal("delete touched another device")
	}
	_, _, err = e.DeleteKeyPackages(e.ctx, bob, "watch", nil)
	wantCode(t, err, kpd.CodeNotFound)
}

func TestSync(t *testing.T) {
	e := newTestDB(t)
	refs := e.publishN(t, bob, "phone", 1, 4)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	theirs := e.publishN(t, alice, "laptop", 1, 1)

	claimedKept := e.claimOne(t, alice, bob, "phone", 1).Ref // refs[0]
	claimedLost := e.claimOne(t, alice, bob, "phone", 1).Ref // refs[1]
	consumed := e.claimOne(t, alice, bob, "phone", 1).Ref    // refs[2]
	w := e.post(t, alice, "c", 1, consumed)
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	unknown := randRef()

	res, err := e.Sync(e.ctx, bob, "phone", []kpd.Ref{claimedKept, consumed, unknown, theirs[0], "nothex", lr.Ref})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Deleted, []kpd.Ref{refs[3]}) {
		t.Errorf("deleted = %v, want %v", res.Deleted, refs[3])
	}
	if !slices.Equal(res.Unknown, []kpd.Ref{consumed, unknown, theirs[0], "nothex"}) {
		t.Errorf("unknown = %v", res.Unknown)
	}
	wantPending := []kpd.Ref{claimedKept, claimedLost}
	slices.Sort(wantPending)
	if !slices.Equal(res.Pending, wantPending) {
		t.Errorf("pending = %v, want %v", res.Pending, wantPending)
	}
	if s := suiteOf(res.Inventory, 1); s.Available != 0 || s.Claimed != 2 || s.LastResort == nil {
		t.Errorf("inventory = %+v", s)
	}
	// Claimed KeyPackages survive a sync that does not list them.
	res, err = e.Sync(e.ctx, bob, "phone", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Deleted, []kpd.Ref{lr.Ref}) || len(res.Pending) != 2 {
		t.Errorf("second sync: %+v", res)
	}
	_, list := e.inventory(t, bob, "phone")
	if stateOf(list, claimedKept) != kpd.StateClaimed || stateOf(list, claimedLost) != kpd.StateClaimed {
		t.Fatalf("sync deleted claimed KeyPackages: %+v", list)
	}
	if inv, _ := e.inventory(t, alice, "laptop"); suiteOf(inv, 1).Available != 1 {
		t.Fatal("sync touched another DID")
	}
}

func TestDevicesAndLastSeen(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "tablet", 1, 2)
	e.clock.Advance(time.Minute)
	e.publishN(t, bob, "phone", 1, 1)
	e.publish(t, bob, "phone", e.newLastResort(3))
	e.publishN(t, alice, "laptop", 1, 1)
	ref := e.claimOne(t, alice, bob, "phone", 1).Ref
	e.post(t, alice, "c", 1, ref)

	e.clock.Advance(time.Minute)
	// Reads do not count as activity.
	e.inventory(t, bob, "tablet")
	if _, err := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{}); err != nil {
		t.Fatal(err)
	}

	devs, err := e.Devices(e.ctx, bob)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0].Device != "phone" || devs[1].Device != "tablet" {
		t.Fatalf("devices = %+v, want phone and tablet by name", devs)
	}
	phone, tablet := devs[0], devs[1]
	if phone.PendingWelcomes != 1 || tablet.PendingWelcomes != 0 {
		t.Errorf("pending welcomes = %d, %d; want 1, 0", phone.PendingWelcomes, tablet.PendingWelcomes)
	}
	if !phone.LastSeen.Equal(t0.Add(time.Minute)) || !tablet.LastSeen.Equal(t0) {
		t.Errorf("last seen = %v, %v", phone.LastSeen, tablet.LastSeen)
	}
	if len(phone.Suites) != 2 || phone.Suites[0].CipherSuite != 1 || phone.Suites[0].Claimed != 1 ||
		phone.Suites[1].CipherSuite != 3 || phone.Suites[1].LastResort == nil {
		t.Errorf("phone suites = %+v", phone.Suites)
	}
	// Owner writes count.
	e.publishN(t, bob, "tablet", 1, 1)
	devs, _ = e.Devices(e.ctx, bob)
	if !devs[1].LastSeen.Equal(t0.Add(2 * time.Minute)) {
		t.Errorf("tablet last seen = %v after a publish", devs[1].LastSeen)
	}
	if devs, err := e.Devices(e.ctx, carol); err != nil || len(devs) != 0 {
		t.Fatalf("devices of a DID without any: %v, %v", devs, err)
	}
}

func TestDeleteDevice(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 3)
	e.publish(t, bob, "phone", e.newLastResort(1))
	e.publishN(t, bob, "tablet", 1, 1)

	pendingRef := e.claimOne(t, alice, bob, "phone", 1).Ref
	consumedRef := e.claimOne(t, alice, bob, "phone", 1).Ref
	tabletRef := e.claimOne(t, alice, bob, "tablet", 1).Ref
	acked := e.post(t, alice, "c1", 1, consumedRef)
	if _, err := e.Ack(e.ctx, bob, "phone", acked.WelcomeID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	pending := e.post(t, alice, "c2", 1, pendingRef, tabletRef)

	e.clock.Advance(time.Minute)
	if err := e.DeleteDevice(e.ctx, bob, "phone"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Inventory(e.ctx, bob, "phone", false); err == nil {
		t.Fatal("deleted device still has an inventory")
	}
	wantCode(t, e.DeleteDevice(e.ctx, bob, "phone"), kpd.CodeNotFound)

	// The sender sees the deleted device's pending delivery as expired, the
	// acked one as acked, and the other device's delivery untouched.
	st, err := e.WelcomeStatus(e.ctx, alice, pending.WelcomeID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Recipients {
		want := map[string]kpd.DeliveryState{"phone": kpd.DeliveryExpired, "tablet": kpd.DeliveryPending}[r.Device]
		if r.Status != want {
			t.Errorf("recipient %s: %s, want %s", r.Device, r.Status, want)
		}
		if r.Device == "phone" && !r.UpdatedAt.Equal(t0.Add(2*time.Minute)) {
			t.Errorf("expired at %v, want the deletion time", r.UpdatedAt)
		}
	}
	st, err = e.WelcomeStatus(e.ctx, alice, acked.WelcomeID)
	if err != nil || st.Recipients[0].Status != kpd.DeliveryAcked {
		t.Fatalf("acked welcome status after deletion: %+v, %v", st, err)
	}

	// Nothing of the device is claimable, its refs are free again, and the
	// other device is intact.
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob, Devices: []string{"phone"}}}})
	if len(res.KeyPackages) != 0 || len(res.Missing) != 1 || res.Missing[0].Reason != kpd.CodeNoKeyPackages {
		t.Fatalf("claim from a deleted device: %+v", res)
	}
	e.publish(t, carol, "pc", kpd.KeyPackage{Ref: pendingRef, CipherSuite: 1, Data: []byte{1}})
	pw, err := e.PendingWelcomes(e.ctx, bob, "tablet", kpd.ListWelcomesOptions{})
	if err != nil || len(pw) != 1 || pw[0].WelcomeID != pending.WelcomeID {
		t.Fatalf("tablet's pending welcomes: %+v, %v", pw, err)
	}
}

// wantRejected posts w, which must route nowhere: every ref rejected with
// reason, and nothing stored.
func wantRejected(t *testing.T, e *env, w kpd.Welcome, reason kpd.Code) {
	t.Helper()
	res, err := e.PostWelcome(e.ctx, w)
	if err != nil {
		t.Fatalf("post welcome: %v", err)
	}
	if len(res.Recipients) != 0 || len(res.Rejected) != len(w.Refs) {
		t.Fatalf("post = %+v, want every ref rejected", res)
	}
	for _, r := range res.Rejected {
		if r.Reason != reason {
			t.Fatalf("rejected %+v, want %s", res.Rejected, reason)
		}
	}
	if _, err := e.WelcomeStatus(e.ctx, w.Sender, w.ID); kpd.ErrorCode(err) != kpd.CodeNotFound {
		t.Fatalf("a Welcome that routed nowhere was stored (status: %v)", err)
	}
}

// A last resort whose owner deleted it while a Welcome was pending, or
// whose lifetime has ended, takes no new Welcome.
func TestLastResortGoneTakesNoWelcome(t *testing.T) {
	e := newTestDB(t)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	e.claimOne(t, alice, bob, "phone", 1)
	w := e.post(t, alice, "c1", 1, lr.Ref)
	if n, _, err := e.DeleteKeyPackages(e.ctx, bob, "phone", nil); err != nil || n != 1 {
		t.Fatalf("delete all: %d, %v", n, err)
	}
	wantRejected(t, e, e.welcome(carol, "c2", 1, lr.Ref), kpd.CodeUnknownKeyPackage)
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatalf("ack of the Welcome pending before the delete: %v", err)
	}

	lr2 := e.newLastResort(1)
	e.publish(t, bob, "tablet", lr2)
	e.claimOne(t, alice, bob, "tablet", 1)
	e.clock.Set(lr2.NotAfter.Add(-time.Second))
	if w := e.post(t, alice, "c3", 1, lr2.Ref); len(w.Recipients) != 1 {
		t.Fatalf("Welcome a second before not_after: %+v", w)
	}
	e.clock.Set(lr2.NotAfter)
	wantRejected(t, e, e.welcome(alice, "c4", 1, lr2.Ref), kpd.CodeUnknownKeyPackage)
	// The inventory no longer reports it as the last resort, even before
	// a sweep deletes it.
	if inv, _ := e.inventory(t, bob, "tablet"); suiteOf(inv, 1).LastResort != nil {
		t.Fatalf("inventory reports an expired last resort: %+v", suiteOf(inv, 1).LastResort)
	}
}
