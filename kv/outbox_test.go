package kv

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

// outbox opens a test database that writes events, with a low watermark
// of 3.
func outbox(t *testing.T, opts ...func(*Options)) *env {
	return newTestDB(t, append([]func(*Options){func(o *Options) { o.Outbox = true; o.LowWatermark = 3 }}, opts...)...)
}

// events returns every event in the outbox.
func (e *env) events(t testing.TB) []kpd.Event {
	t.Helper()
	evs, err := e.PendingEvents(e.ctx, 0, 1<<20)
	if err != nil {
		t.Fatalf("pending events: %v", err)
	}
	return evs
}

// newEvents returns the events after seq and the last sequence seen.
func (e *env) newEvents(t testing.TB, seq *uint64) []kpd.Event {
	t.Helper()
	evs, err := e.PendingEvents(e.ctx, *seq, 1<<20)
	if err != nil {
		t.Fatalf("pending events: %v", err)
	}
	if len(evs) > 0 {
		*seq = evs[len(evs)-1].Seq
	}
	return evs
}

// brief renders events as "type device suite available" lines.
func brief(evs []kpd.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s %s %d", ev.Type, ev.Device, ev.CipherSuite)
		if ev.Available != nil {
			out[i] += fmt.Sprintf(" %d", *ev.Available)
		}
	}
	return out
}

func wantEvents(t *testing.T, step string, got []kpd.Event, want ...string) {
	t.Helper()
	if b := brief(got); !slices.Equal(b, want) {
		t.Errorf("%s: events %q, want %q", step, b, want)
	}
}

// TestWatermarkEvents: low fires when the available count falls to or
// below the watermark, once until a publish raises it; exhausted when it
// reaches zero; by claim, delete, sync and sweep.
func TestWatermarkEvents(t *testing.T) {
	e := outbox(t)
	var seq uint64
	e.publishN(t, bob, "phone", 1, 5)
	wantEvents(t, "publish", e.newEvents(t, &seq))
	e.claimOne(t, alice, bob, "phone", 1) // 4
	wantEvents(t, "claim to 4", e.newEvents(t, &seq))
	e.claimOne(t, alice, bob, "phone", 1) // 3
	wantEvents(t, "claim to 3", e.newEvents(t, &seq), "key_packages.low phone 1 3")
	e.claimOne(t, alice, bob, "phone", 1) // 2
	e.claimOne(t, alice, bob, "phone", 1) // 1
	wantEvents(t, "claims below the watermark", e.newEvents(t, &seq))
	e.claimOne(t, alice, bob, "phone", 1) // 0
	wantEvents(t, "last claim", e.newEvents(t, &seq), "key_packages.exhausted phone 1 0")
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	if len(res.Missing) != 1 {
		t.Fatalf("claim from an exhausted device: %+v", res)
	}
	wantEvents(t, "claim from an exhausted device", e.newEvents(t, &seq))

	// Replenished above the watermark and drained again: they fire again,
	// both at once when one delete crosses both.
	e.publishN(t, bob, "phone", 1, 6)
	wantEvents(t, "replenish", e.newEvents(t, &seq))
	if _, _, err := e.DeleteKeyPackages(e.ctx, bob, "phone", nil); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "delete all", e.newEvents(t, &seq), "key_packages.low phone 1 0", "key_packages.exhausted phone 1 0")

	// Sync, and a second suite: only the suite that crosses fires.
	keep := e.publishN(t, bob, "phone", 1, 5)
	suite2 := e.publishN(t, bob, "phone", 2, 5)
	if _, err := e.Sync(e.ctx, bob, "phone", slices.Concat(keep[:2], suite2[:4])); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "sync to 2", e.newEvents(t, &seq), "key_packages.low phone 1 2")

	// Expiry by the sweeper.
	e.publish(t, bob, "tablet", e.kpExpiring(1, false, time.Hour))
	e.clock.Advance(time.Hour)
	e.sweep(t)
	wantEvents(t, "sweep", e.newEvents(t, &seq), "key_packages.low tablet 1 0", "key_packages.exhausted tablet 1 0")

	// A pool that never rises above the watermark: low fires at its first
	// fall, and again after each publish, even one that leaves it at or
	// below the watermark.
	e.publishN(t, bob, "laptop", 1, 3)
	wantEvents(t, "publish 3", e.newEvents(t, &seq))
	e.claimOne(t, alice, bob, "laptop", 1) // 2
	wantEvents(t, "claim to 2", e.newEvents(t, &seq), "key_packages.low laptop 1 2")
	e.claimOne(t, alice, bob, "laptop", 1) // 1
	wantEvents(t, "claim to 1", e.newEvents(t, &seq))
	e.publishN(t, bob, "laptop", 1, 2) // 3
	wantEvents(t, "top up to 3", e.newEvents(t, &seq))
	e.claimOne(t, alice, bob, "laptop", 1) // 2
	wantEvents(t, "claim to 2 after the top-up", e.newEvents(t, &seq), "key_packages.low laptop 1 2")

	// Deleting a device asks for nothing.
	if err := e.DeleteDevice(e.ctx, bob, "phone"); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "device deletion", e.newEvents(t, &seq))
}

// TestLowWatermarkOff: with LowWatermarkOff no key_packages.low event
// fires, by claim or by delete, key_packages.exhausted still does, and
// inventories report a watermark of 0.
func TestLowWatermarkOff(t *testing.T) {
	e := outbox(t, func(o *Options) { o.LowWatermark = LowWatermarkOff })
	var seq uint64
	res, inv, err := e.Publish(e.ctx, bob, "phone", []kpd.KeyPackage{e.newKP(1), e.newKP(1)})
	if err != nil || len(res) != 2 {
		t.Fatalf("publish: %v, %v", res, err)
	}
	if inv.LowWatermark != 0 {
		t.Fatalf("publish reports a low watermark of %d, want 0", inv.LowWatermark)
	}
	e.claimOne(t, alice, bob, "phone", 1)
	e.claimOne(t, alice, bob, "phone", 1)
	wantEvents(t, "claims to 0", e.newEvents(t, &seq), "key_packages.exhausted phone 1 0")

	e.publishN(t, bob, "phone", 1, 20)
	if _, _, err := e.DeleteKeyPackages(e.ctx, bob, "phone", nil); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "delete all", e.newEvents(t, &seq), "key_packages.exhausted phone 1 0")
	if inv, _ := e.inventory(t, bob, "phone"); inv.LowWatermark != 0 {
		t.Fatalf("inventory reports a low watermark of %d, want 0", inv.LowWatermark)
	}
}

// TestEventsInTheSameTransaction: an all_or_nothing claim that fails
// writes nothing, events included.
func TestEventsInTheSameTransaction(t *testing.T) {
	e := outbox(t)
	e.publishN(t, bob, "phone", 1, 4)
	e.publish(t, bob, "tablet", e.newLastResort(1))
	var seq uint64
	e.newEvents(t, &seq)
	_, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, AllOrNothing: true,
		Targets: []kpd.ClaimTarget{{DID: bob}, {DID: carol}}})
	wantCode(t, err, kpd.CodeConflict)
	wantEvents(t, "failed all_or_nothing claim", e.newEvents(t, &seq))
	e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, AllOrNothing: true, Targets: []kpd.ClaimTarget{{DID: bob}}})
	wantEvents(t, "all_or_nothing claim", e.newEvents(t, &seq), "key_packages.low phone 1 3", "last_resort.served tablet 1")
}

func TestLastResortEvents(t *testing.T) {
	e := outbox(t)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	regular := e.publishN(t, bob, "tablet", 1, 5)
	var seq uint64
	for range 3 {
		e.claimOne(t, alice, bob, "phone", 1)
	}
	served := e.newEvents(t, &seq)
	wantEvents(t, "claims", served, "last_resort.served phone 1", "last_resort.served phone 1", "last_resort.served phone 1")
	if served[0].Ref != lr.Ref || served[0].DID != bob {
		t.Errorf("served event = %+v", served[0])
	}

	e.claimOne(t, alice, bob, "tablet", 1)
	acked := e.post(t, alice, "c1", 1, lr.Ref, regular[0])
	rejected := e.post(t, alice, "c2", 1, lr.Ref)
	e.post(t, alice, "c3", 1, lr.Ref)
	e.newEvents(t, &seq)
	for _, device := range []string{"phone", "tablet"} {
		if _, err := e.Ack(e.ctx, bob, device, acked.WelcomeID); err != nil {
			t.Fatal(err)
		}
	}
	used := e.newEvents(t, &seq)
	wantEvents(t, "acks", used, "last_resort.used phone 1")
	if used[0].Ref != lr.Ref || used[0].WelcomeID != acked.WelcomeID || used[0].ConvoID != "c1" {
		t.Errorf("used event = %+v", used[0])
	}
	if _, err := e.Ack(e.ctx, bob, "phone", acked.WelcomeID); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "repeated ack", e.newEvents(t, &seq))
	if _, err := e.Reject(e.ctx, bob, "phone", rejected.WelcomeID, kpd.ReasonOther, ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Take(e.ctx, bob, "phone", ""); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, "reject and take", e.newEvents(t, &seq), "last_resort.used phone 1", "last_resort.used phone 1")
}

func TestWelcomePendingEvents(t *testing.T) {
	e := outbox(t)
	e.publishN(t, bob, "phone", 1, 5)
	e.publishN(t, bob, "tablet", 1, 5)
	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	var seq uint64
	e.newEvents(t, &seq)
	e.clock.Advance(time.Minute)
	w := e.welcome(alice, "convo", 1, res.KeyPackages[0].Ref, res.KeyPackages[1].Ref)
	if _, err := e.PostWelcome(e.ctx, w); err != nil {
		t.Fatal(err)
	}
	evs := e.newEvents(t, &seq)
	wantEvents(t, "post", evs, "welcome.pending phone 1", "welcome.pending tablet 1")
	for i, ev := range evs {
		want := kpd.Event{ID: fmt.Sprintf("evt_%016x_%016x", t0.Add(time.Minute).UnixNano(), ev.Seq), Type: kpd.EventWelcomePending, Seq: ev.Seq,
			DID: bob, Device: res.KeyPackages[i].Device, CipherSuite: 1, Ref: res.KeyPackages[i].Ref,
			WelcomeID: w.ID, ConvoID: "convo", Sender: alice, CreatedAt: t0.Add(time.Minute)}
		if ev != want {
			t.Errorf("event %d = %+v\nwant %+v", i, ev, want)
		}
	}
	if again, err := e.PostWelcome(e.ctx, w); err != nil || again.Created {
		t.Fatalf("re-post = %+v, %v", again, err)
	}
	wantEvents(t, "re-post", e.newEvents(t, &seq))
}

// TestOutboxLifecycle: sequences and IDs, paging, durability, deletion,
// and the counter in Stats.
func TestOutboxLifecycle(t *testing.T) {
	e := outbox(t)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	for range 5 {
		e.claimOne(t, alice, bob, "phone", 1)
	}
	all := e.events(t)
	if len(all) != 5 {
		t.Fatalf("%d events, want 5", len(all))
	}
	for i, ev := range all {
		if i > 0 && ev.Seq <= all[i-1].Seq {
			t.Fatalf("events out of order: %+v", all)
		}
		if ev.ID != fmt.Sprintf("evt_%016x_%016x", ev.CreatedAt.UnixNano(), ev.Seq) || len(ev.ID) != 37 {
			t.Fatalf("event id %q for seq %d", ev.ID, ev.Seq)
		}
	}
	page, err := e.PendingEvents(e.ctx, all[1].Seq, 2)
	if err != nil || len(page) != 2 || page[0] != all[2] || page[1] != all[3] {
		t.Fatalf("page after %d = %+v, %v", all[1].Seq, page, err)
	}
	if page, err := e.PendingEvents(e.ctx, all[4].Seq, 0); err != nil || len(page) != 0 {
		t.Fatalf("page after the last = %+v, %v", page, err)
	}
	if s := e.stats(t); s.PendingEvents != 5 {
		t.Fatalf("stats pending events = %d", s.PendingEvents)
	}

	// Durable: a reopened database has the same events.
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := Open(e.path, &Options{Clock: e.clock.Now, Outbox: true})
	if err != nil {
		t.Fatal(err)
	}
	e.DB = db
	if again := e.events(t); !slices.Equal(again, all) {
		t.Fatalf("after reopen: %+v\nwant %+v", again, all)
	}

	if err := e.DeleteEvents(e.ctx, []uint64{all[0].Seq, all[2].Seq, all[2].Seq, 9999}); err != nil {
		t.Fatal(err)
	}
	if left := e.events(t); !slices.Equal(left, []kpd.Event{all[1], all[3], all[4]}) {
		t.Fatalf("after delete: %+v", left)
	}
	if s := e.stats(t); s.PendingEvents != 3 {
		t.Fatalf("stats pending events after delete = %d", s.PendingEvents)
	}
	// Sequences are never reused.
	e.claimOne(t, alice, bob, "phone", 1)
	if evs := e.events(t); evs[len(evs)-1].Seq <= all[4].Seq {
		t.Fatalf("new event seq %d after %d", evs[len(evs)-1].Seq, all[4].Seq)
	}
}

func TestOutboxCap(t *testing.T) {
	e := outbox(t, func(o *Options) { o.MaxOutbox = 5 })
	for _, device := range []string{"phone", "tablet", "watch"} {
		e.publish(t, bob, device, e.newLastResort(1))
	}
	for range 4 {
		e.claimOne(t, alice, bob, "phone", 1)
	}
	first := e.events(t)
	// One transaction that adds three events: the two oldest go.
	e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: bob}}})
	evs := e.events(t)
	if len(evs) != 5 || evs[0] != first[2] || evs[1] != first[3] || evs[4].Device != "watch" {
		t.Fatalf("capped outbox: %+v\nearlier %+v", evs, first)
	}
	e.claimOne(t, alice, bob, "phone", 1)
	if evs := e.events(t); len(evs) != 5 || evs[0] != first[3] {
		t.Fatalf("capped outbox: %+v", evs)
	}
	dropped, err := e.DroppedEvents(e.ctx)
	if err != nil || dropped != 3 {
		t.Fatalf("dropped = %d, %v; want 3", dropped, err)
	}
	if s := e.stats(t); s.PendingEvents != 5 {
		t.Fatalf("stats pending events = %d", s.PendingEvents)
	}
}

func TestOutboxOff(t *testing.T) {
	e := newTestDB(t)
	e.publish(t, bob, "phone", e.newLastResort(1))
	e.publishN(t, bob, "phone", 1, 20)
	for range 25 {
		e.claimOne(t, alice, bob, "phone", 1)
	}
	if evs := e.events(t); len(evs) != 0 {
		t.Fatalf("events without an outbox: %+v", evs)
	}
	if s := e.stats(t); s.PendingEvents != 0 {
		t.Fatalf("stats pending events = %d", s.PendingEvents)
	}
}

// Event IDs stay unique when the outbox numbers events again: after a
// restore, new events get the sequences of events made (and delivered)
// after the snapshot, but not their IDs, which receivers deduplicate by.
func TestOutboxIDsUniqueAfterRestore(t *testing.T) {
	e := outbox(t)
	e.publishN(t, bob, "phone", 1, 5)
	snap := filepath.Join(t.TempDir(), "snap.db")
	f, err := os.Create(snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.WriteSnapshot(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.clock.Advance(time.Minute)
	e.claimOne(t, alice, bob, "phone", 1)
	e.claimOne(t, alice, bob, "phone", 1) // 5 -> 3: key_packages.low
	before := e.events(t)
	if len(before) == 0 {
		t.Fatal("no event after the snapshot")
	}

	r := verified(t, openTestFile(t, snap, func(o *Options) { o.Outbox = true; o.LowWatermark = 3 }))
	r.clock.Advance(time.Hour) // the restore comes later
	r.claimOne(t, alice, bob, "phone", 1)
	r.claimOne(t, alice, bob, "phone", 1)
	after := r.events(t)
	if len(after) != len(before) || after[0].Seq != before[0].Seq {
		t.Fatalf("the restored outbox does not number the same: before %+v, after %+v", before, after)
	}
	for i := range after {
		if after[i].ID == before[i].ID {
			t.Errorf("event %d: ID %s again, for a new event", i, after[i].ID)
		}
	}
}

// A Low flag does not outlive what it stands for: a publish while the
// outbox is off clears it, and one set under a higher watermark does not
// hold back the event of a fall from above today's.
func TestLowFlagAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpd.db")
	reopen := func(e *env, opts func(*Options)) *env {
		t.Helper()
		if e != nil {
			if err := e.DB.Close(); err != nil {
				t.Fatal(err)
			}
		}
		return openTestFile(t, path, opts)
	}
	var seq uint64
	e := reopen(nil, func(o *Options) { o.Outbox = true; o.LowWatermark = 3 })
	e.publishN(t, bob, "phone", 1, 5)
	e.claimOne(t, alice, bob, "phone", 1)
	e.claimOne(t, alice, bob, "phone", 1) // 3: low, flag set
	wantEvents(t, "fall to 3", e.newEvents(t, &seq), "key_packages.low phone 1 3")

	e.claimOne(t, alice, bob, "phone", 1) // 2
	wantEvents(t, "fall to 2", e.newEvents(t, &seq))

	e = reopen(e, func(o *Options) { o.Outbox = false; o.LowWatermark = 3 })
	e.publishN(t, bob, "phone", 1, 1) // 3, no events written

	e = reopen(e, func(o *Options) { o.Outbox = true; o.LowWatermark = 3 })
	e.claimOne(t, alice, bob, "phone", 1) // 2
	wantEvents(t, "fall to 2 after a publish with the outbox off", e.newEvents(t, &seq), "key_packages.low phone 1 2")
	e.publishN(t, bob, "phone", 1, 12) // 14
	for range 11 {
		e.claimOne(t, alice, bob, "phone", 1)
	}
	wantEvents(t, "fall to 3", e.newEvents(t, &seq), "key_packages.low phone 1 3")

	e = reopen(e, func(o *Options) { o.Outbox = true; o.LowWatermark = 10 })
	e.publishN(t, bob, "phone", 1, 8) // 11
	e.claimOne(t, alice, bob, "phone", 1)
	wantEvents(t, "fall to 10", e.newEvents(t, &seq), "key_packages.low phone 1 10")
	e.claimOne(t, alice, bob, "phone", 1)
	e.claimOne(t, alice, bob, "phone", 1) // 8
	e = reopen(e, func(o *Options) { o.Outbox = true; o.LowWatermark = 3 })
	for range 4 {
		e.claimOne(t, alice, bob, "phone", 1) // 7 … 4: above today's watermark
	}
	wantEvents(t, "falls above the lowered watermark", e.newEvents(t, &seq))
	e.claimOne(t, alice, bob, "phone", 1) // 3
	wantEvents(t, "fall to the lowered watermark", e.newEvents(t, &seq), "key_packages.low phone 1 3")
	if vs, err := e.Verify(e.ctx); err != nil || len(vs) != 0 {
		t.Fatalf("verify: %v %v", vs, err)
	}
}
