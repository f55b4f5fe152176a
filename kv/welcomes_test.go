package kv

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

func TestWelcomeLifecycle(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 2)
	ref := e.claimOne(t, alice, bob, "phone", 1).Ref

	e.clock.Advance(time.Minute)
	w := e.welcome(alice, "convo-1", 1, ref)
	res, err := e.PostWelcome(e.ctx, w)
	if err != nil {
		t.Fatal(err)
	}
	want := []kpd.Recipient{{DID: bob, Device: "phone", Ref: ref, Status: kpd.DeliveryPending, UpdatedAt: t0.Add(time.Minute)}}
	if !res.Created || res.WelcomeID != w.ID || !slices.Equal(res.Recipients, want) || len(res.Rejected) != 0 {
		t.Fatalf("post = %+v, want %+v", res, want)
	}
	// Routed but not yet acked: still claimed.
	inv, list := e.inventory(t, bob, "phone")
	if stateOf(list, ref) != kpd.StateClaimed || suiteOf(inv, 1).Claimed != 1 {
		t.Fatalf("routed KeyPackage is %s", stateOf(list, ref))
	}

	pw, err := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pw) != 1 || pw[0].WelcomeID != w.ID || pw[0].ConvoID != "convo-1" || pw[0].Sender != alice ||
		pw[0].Ref != ref || pw[0].CipherSuite != 1 || !bytes.Equal(pw[0].Welcome, w.Data) || !pw[0].CreatedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("pending = %+v", pw)
	}
	st, err := e.WelcomeStatus(e.ctx, alice, w.ID)
	if err != nil || st.ConvoID != "convo-1" || !slices.Equal(st.Recipients, want) {
		t.Fatalf("status = %+v, %v", st, err)
	}
	_, err = e.WelcomeStatus(e.ctx, carol, w.ID)
	wantCode(t, err, kpd.CodeNotFound)

	e.clock.Advance(time.Minute)
	ack, err := e.Ack(e.ctx, bob, "phone", w.ID)
	if err != nil || ack.Ref != ref || !ack.ConsumedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("ack = %+v, %v", ack, err)
	}
	inv, list = e.inventory(t, bob, "phone")
	if stateOf(list, ref) != kpd.StateConsumed || suiteOf(inv, 1).Claimed != 0 || suiteOf(inv, 1).Available != 1 {
		t.Fatalf("after ack: %s, %+v", stateOf(list, ref), suiteOf(inv, 1))
	}
	if rec := e.record(t, ref); rec.Data != nil || rec.ConsumedAt == nil || rec.Claimer != alice {
		t.Fatalf("consumed record: %+v", rec)
	}

	// Idempotent: a second ack reports the first.
	e.clock.Advance(time.Minute)
	again, err := e.Ack(e.ctx, bob, "phone", w.ID)
	if err != nil || *again != *ack {
		t.Fatalf("second ack = %+v, %v; want %+v", again, err, ack)
	}
	if pw, _ := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{}); len(pw) != 0 {
		t.Fatalf("acked welcome still pending: %+v", pw)
	}

	// Posting it again returns the stored result with the current status.
	repost, err := e.PostWelcome(e.ctx, w)
	if err != nil || repost.Created || repost.WelcomeID != w.ID || len(repost.Recipients) != 1 ||
		repost.Recipients[0].Status != kpd.DeliveryAcked || !repost.Recipients[0].UpdatedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("repost = %+v, %v", repost, err)
	}
	// The same Welcome for another conversation, or from someone else, is
	// a conflict.
	other := w
	other.ConvoID = "another convo"
	_, err = e.PostWelcome(e.ctx, other)
	if ke := wantCode(t, err, kpd.CodeConflict); !strings.Contains(ke.Message, w.ConvoID) {
		t.Errorf("conflict %q does not name the stored convo_id %q", ke.Message, w.ConvoID)
	}
	w.Sender = carol
	_, err = e.PostWelcome(e.ctx, w)
	wantCode(t, err, kpd.CodeConflict)

	_, err = e.Ack(e.ctx, bob, "phone", "0000")
	wantCode(t, err, kpd.CodeNotFound)
	_, err = e.Ack(e.ctx, bob, "tablet", w.ID)
	wantCode(t, err, kpd.CodeNotFound)
}

func TestWelcomeRejectedRefs(t *testing.T) {
	e := newTestDB(t)
	refs := e.publishN(t, bob, "phone", 1, 5)
	suite2 := e.publishN(t, bob, "phone", 2, 1)
	mine := e.claimOne(t, alice, bob, "phone", 1).Ref     // refs[0]
	carols := e.claimOne(t, carol, bob, "phone", 1).Ref   // refs[1]
	consumed := e.claimOne(t, alice, bob, "phone", 1).Ref // refs[2]
	bound := e.claimOne(t, alice, bob, "phone", 1).Ref    // refs[3]
	e.claimOne(t, alice, bob, "phone", 2)
	w := e.post(t, alice, "c", 1, consumed)
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	e.post(t, alice, "c", 1, bound)
	unknown := randRef()

	res := e.post(t, alice, "c", 1, unknown, suite2[0], refs[4], carols, consumed, bound, mine)
	wantRejected := []kpd.RejectedRef{
		{Ref: unknown, Reason: kpd.CodeUnknownKeyPackage},
		{Ref: suite2[0], Reason: kpd.CodeSuiteMismatch},
		{Ref: refs[4], Reason: kpd.CodeNotClaimedByCaller},
		{Ref: carols, Reason: kpd.CodeNotClaimedByCaller},
		{Ref: consumed, Reason: kpd.CodeAlreadyConsumed},
		{Ref: bound, Reason: kpd.CodeAlreadyConsumed},
	}
	if !slices.Equal(res.Rejected, wantRejected) {
		t.Errorf("rejected = %+v\nwant %+v", res.Rejected, wantRejected)
	}
	if len(res.Recipients) != 1 || res.Recipients[0].Ref != mine {
		t.Errorf("recipients = %+v, want only %s", res.Recipients, mine)
	}

	// Nothing routable: nothing stored.
	none := e.welcome(alice, "c", 1, unknown, refs[4])
	res, err := e.PostWelcome(e.ctx, none)
	if err != nil || res.Created || len(res.Recipients) != 0 || len(res.Rejected) != 2 {
		t.Fatalf("unroutable post = %+v, %v", res, err)
	}
	_, err = e.WelcomeStatus(e.ctx, alice, none.ID)
	wantCode(t, err, kpd.CodeNotFound)

	_, err = e.PostWelcome(e.ctx, kpd.Welcome{ID: "x", ConvoID: "c", Sender: alice, CipherSuite: 1})
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = e.PostWelcome(e.ctx, kpd.Welcome{ID: "x", ConvoID: strings.Repeat("c", 257), Sender: alice, CipherSuite: 1, Data: []byte{1}})
	wantCode(t, err, kpd.CodeBadRequest)
}

func TestWelcomeTwoRefsOneDevice(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 3)
	e.publishN(t, carol, "pc", 1, 1)
	r1 := e.claimOne(t, alice, bob, "phone", 1).Ref
	r2 := e.claimOne(t, alice, bob, "phone", 1).Ref
	r3 := e.claimOne(t, alice, carol, "pc", 1).Ref

	res := e.post(t, alice, "c", 1, r1, r3, r2)
	var got []string
	for _, r := range res.Recipients {
		got = append(got, r.Device+"/"+string(r.Ref))
	}
	want := []string{"phone/" + string(r1), "phone/" + string(r2), "pc/" + string(r3)}
	if !slices.Equal(got, want) {
		t.Fatalf("recipients = %v, want %v", got, want)
	}
	pw, _ := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{})
	if len(pw) != 1 {
		t.Fatalf("one device named twice got %d deliveries", len(pw))
	}
	devs, _ := e.Devices(e.ctx, bob)
	if devs[0].PendingWelcomes != 1 {
		t.Fatalf("pending welcomes = %d, want 1", devs[0].PendingWelcomes)
	}
	if _, err := e.Ack(e.ctx, bob, "phone", res.WelcomeID); err != nil {
		t.Fatal(err)
	}
	_, list := e.inventory(t, bob, "phone")
	if stateOf(list, r1) != kpd.StateConsumed || stateOf(list, r2) != kpd.StateConsumed {
		t.Fatalf("ack consumed %s and %s", stateOf(list, r1), stateOf(list, r2))
	}
	st, _ := e.WelcomeStatus(e.ctx, alice, res.WelcomeID)
	for _, r := range st.Recipients {
		want := map[string]kpd.DeliveryState{"phone": kpd.DeliveryAcked, "pc": kpd.DeliveryPending}[r.Device]
		if r.Status != want {
			t.Errorf("%s: %s, want %s", r.Device, r.Status, want)
		}
	}
}

func TestWelcomeLastResortNeverConsumed(t *testing.T) {
	e := newTestDB(t)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	e.claimOne(t, alice, bob, "phone", 1)
	e.claimOne(t, carol, bob, "phone", 1)

	// Anyone may route a Welcome to a last resort, several at once.
	w1 := e.post(t, alice, "c1", 1, lr.Ref)
	w2 := e.post(t, carol, "c2", 1, lr.Ref)
	if len(w1.Recipients) != 1 || len(w2.Recipients) != 1 {
		t.Fatalf("last resort not routed: %+v %+v", w1, w2)
	}
	if rec := e.record(t, lr.Ref); rec.Pending != 2 {
		t.Fatalf("pending deliveries of the last resort = %d, want 2", rec.Pending)
	}
	if _, err := e.Ack(e.ctx, bob, "phone", w1.WelcomeID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Reject(e.ctx, bob, "phone", w2.WelcomeID, kpd.ReasonOther, ""); err != nil {
		t.Fatal(err)
	}
	inv, list := e.inventory(t, bob, "phone")
	if stateOf(list, lr.Ref) != kpd.StateAvailable || suiteOf(inv, 1).LastResort == nil || suiteOf(inv, 1).LastResort.Served != 2 {
		t.Fatalf("last resort after two Welcomes: %s, %+v", stateOf(list, lr.Ref), suiteOf(inv, 1).LastResort)
	}
	if got := e.claimOne(t, alice, bob, "phone", 1); got.Ref != lr.Ref {
		t.Fatalf("last resort not served after an ack")
	}
}

func TestReject(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 3)
	r1 := e.claimOne(t, alice, bob, "phone", 1).Ref
	r2 := e.claimOne(t, alice, bob, "phone", 1).Ref
	w1 := e.post(t, alice, "c", 1, r1)
	w2 := e.post(t, alice, "c", 1, r2)

	_, err := e.Reject(e.ctx, bob, "phone", w1.WelcomeID, "Bored", "")
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = e.Reject(e.ctx, bob, "phone", w1.WelcomeID, kpd.ReasonOther, strings.Repeat("x", MaxRejectDetail+1))
	wantCode(t, err, kpd.CodeBadRequest)

	e.clock.Advance(time.Minute)
	rej, err := e.Reject(e.ctx, bob, "phone", w1.WelcomeID, kpd.ReasonNoMatchingKeyPackage, "no key for it")
	if err != nil || rej.Ref != r1 || !rej.ConsumedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("reject = %+v, %v", rej, err)
	}
	_, list := e.inventory(t, bob, "phone")
	if stateOf(list, r1) != kpd.StateConsumed {
		t.Fatalf("rejected Welcome's KeyPackage is %s", stateOf(list, r1))
	}
	st, _ := e.WelcomeStatus(e.ctx, alice, w1.WelcomeID)
	if r := st.Recipients[0]; r.Status != kpd.DeliveryRejected || r.Reason != kpd.ReasonNoMatchingKeyPackage || r.Detail != "no key for it" {
		t.Fatalf("sender sees %+v", r)
	}
	e.clock.Advance(time.Minute)
	again, err := e.Reject(e.ctx, bob, "phone", w1.WelcomeID, kpd.ReasonOther, "")
	if err != nil || *again != *rej {
		t.Fatalf("second reject = %+v, %v; want %+v", again, err, rej)
	}
	_, err = e.Ack(e.ctx, bob, "phone", w1.WelcomeID)
	wantCode(t, err, kpd.CodeConflict)

	if _, err := e.Ack(e.ctx, bob, "phone", w2.WelcomeID); err != nil {
		t.Fatal(err)
	}
	_, err = e.Reject(e.ctx, bob, "phone", w2.WelcomeID, kpd.ReasonInvalidWelcome, "")
	wantCode(t, err, kpd.CodeConflict)
}

func TestPendingAndTake(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 4)
	var ids []string
	for _, convo := range []string{"a", "b", "a", "b"} {
		e.clock.Advance(time.Second)
		ref := e.claimOne(t, alice, bob, "phone", 1).Ref
		ids = append(ids, e.post(t, alice, convo, 1, ref).WelcomeID)
	}
	list := func(opts kpd.ListWelcomesOptions) []string {
		t.Helper()
		pw, err := e.PendingWelcomes(e.ctx, bob, "phone", opts)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range pw {
			out = append(out, p.WelcomeID)
		}
		return out
	}
	if got := list(kpd.ListWelcomesOptions{}); !slices.Equal(got, ids) {
		t.Fatalf("pending = %v, want oldest first %v", got, ids)
	}
	if got := list(kpd.ListWelcomesOptions{Limit: 2}); !slices.Equal(got, ids[:2]) {
		t.Fatalf("limit 2 = %v", got)
	}
	if got := list(kpd.ListWelcomesOptions{ConvoID: "b"}); !slices.Equal(got, []string{ids[1], ids[3]}) {
		t.Fatalf("convo b = %v", got)
	}

	pw, ack, err := e.Take(e.ctx, bob, "phone", "b")
	if err != nil || pw.WelcomeID != ids[1] || ack.Ref != pw.Ref || len(pw.Welcome) == 0 {
		t.Fatalf("take b = %+v, %+v, %v", pw, ack, err)
	}
	pw, _, err = e.Take(e.ctx, bob, "phone", "")
	if err != nil || pw.WelcomeID != ids[0] {
		t.Fatalf("take = %+v, %v; want %s", pw, err, ids[0])
	}
	if got := list(kpd.ListWelcomesOptions{}); !slices.Equal(got, []string{ids[2], ids[3]}) {
		t.Fatalf("pending after two takes = %v", got)
	}
	st, _ := e.WelcomeStatus(e.ctx, alice, ids[1])
	if st.Recipients[0].Status != kpd.DeliveryAcked {
		t.Fatalf("taken welcome is %s", st.Recipients[0].Status)
	}
	e.Take(e.ctx, bob, "phone", "")
	e.Take(e.ctx, bob, "phone", "")
	_, _, err = e.Take(e.ctx, bob, "phone", "")
	wantCode(t, err, kpd.CodeNotFound)
	_, err = e.PendingWelcomes(e.ctx, bob, "watch", kpd.ListWelcomesOptions{})
	wantCode(t, err, kpd.CodeNotFound)
}

// A Welcome names at most MaxWelcomeRefs new members, the most a stored
// Welcome's record can hold and still be read back: one at that limit is
// stored, listed, shown to its sender and swept; one beyond is refused
// before anything is written. Repeated refs, invalid ones too, count once.
func TestWelcomeMembersLimit(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 1)
	ref := e.claimOne(t, alice, bob, "phone", 1).Ref
	refs := []kpd.Ref{ref}
	for len(refs) < MaxWelcomeRefs {
		refs = append(refs, randRef())
	}
	_, err := e.PostWelcome(e.ctx, e.welcome(alice, "c0", 1, append(refs, randRef())...))
	if ke := wantCode(t, err, kpd.CodePayloadTooLarge); ke.Limit != kpd.LimitWelcomeMembers {
		t.Fatalf("limit %q, want %s", ke.Limit, kpd.LimitWelcomeMembers)
	}

	w := e.welcome(alice, "c1", 1, refs...)
	res, err := e.PostWelcome(e.ctx, w)
	if err != nil || len(res.Recipients) != 1 || len(res.Rejected) != MaxWelcomeRefs-1 {
		t.Fatalf("post: %v, %d recipients, %d rejected", err, len(res.Recipients), len(res.Rejected))
	}
	if list, err := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{}); err != nil || len(list) != 1 {
		t.Fatalf("pending: %d, %v", len(list), err)
	}
	if st, err := e.WelcomeStatus(e.ctx, alice, w.ID); err != nil || len(st.Recipients) != 1 {
		t.Fatalf("status: %+v, %v", st, err)
	}
	if _, err := e.Ack(e.ctx, bob, "phone", w.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(31 * 24 * time.Hour)
	if _, err := e.Sweep(e.ctx, e.clock.Now()); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if _, err := e.WelcomeStatus(e.ctx, alice, w.ID); kpd.ErrorCode(err) != kpd.CodeNotFound {
		t.Fatalf("status after the retention: %v, want NotFound", err)
	}

	// Repeats are rejected once.
	e.publishN(t, bob, "phone", 1, 1)
	ref = e.claimOne(t, alice, bob, "phone", 1).Ref
	other := randRef()
	dup := []kpd.Ref{ref, ref, other}
	for range 1000 {
		dup = append(dup, "", "not hex", other)
	}
	res = e.post(t, alice, "c2", 1, dup...)
	if len(res.Recipients) != 1 || len(res.Rejected) != 3 {
		t.Fatalf("repeated refs: %d recipients, rejected %+v; want 1 and 3", len(res.Recipients), res.Rejected)
	}
}
