package webhook_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/webhook"
)

var _ webhook.Source = (*kv.DB)(nil)

func openOutbox(t *testing.T, path string) *kv.DB {
	t.Helper()
	return openOutboxAt(t, path, func() time.Time { return eventsAt })
}

// openOutboxAt opens a store with an outbox, a low watermark of 1 and
// clock.
func openOutboxAt(t *testing.T, path string, clock kpd.Clock) *kv.DB {
	t.Helper()
	db, err := kv.Open(path, &kv.Options{Clock: clock, NoSync: true, Outbox: true, LowWatermark: 1})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// publishAndDrain publishes two KeyPackages for a device and claims both:
// the pool falls to the watermark (key_packages.low) and then to zero
// (key_packages.exhausted). The KeyPackages are valid from an hour before
// eventsAt to a day after.
func publishAndDrain(t *testing.T, db *kv.DB, did, device string) {
	t.Helper()
	ctx := context.Background()
	kps := make([]kpd.KeyPackage, 2)
	for i := range kps {
		ref := make([]byte, 32)
		rand.Read(ref)
		kps[i] = kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: []byte("kp"),
			NotBefore: eventsAt.Add(-time.Hour), NotAfter: eventsAt.Add(24 * time.Hour)}
	}
	if _, _, err := db.Publish(ctx, did, device, kps); err != nil {
		t.Fatal(err)
	}
	for range kps {
		if _, err := db.Claim(ctx, kpd.ClaimRequest{Claimer: "did:plc:claimer", CipherSuite: 1,
			Targets: []kpd.ClaimTarget{{DID: did, Devices: []string{device}}}}); err != nil {
			t.Fatal(err)
		}
	}
}

// The dispatcher empties kv's outbox; events that could not be delivered
// survive a restart of the store and are delivered, in order, afterwards.
func TestDispatcherWithStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpd.db")
	db := openOutbox(t, path)
	publishAndDrain(t, db, "did:plc:alice", "phone")

	// The receiver is down: nothing is delivered, nothing is lost.
	var mu sync.Mutex
	down := true
	rc, url := newReceiver(t, func(kpd.Event, int) bool {
		mu.Lock()
		defer mu.Unlock()
		return down
	})
	stop := run(t, newDispatcher(db, url, &outcomes{}))
	<-rc.got
	stop()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openOutbox(t, path)
	t.Cleanup(func() { db.Close() })
	pending, err := db.PendingEvents(context.Background(), 0, 10)
	if err != nil || len(pending) != 2 {
		t.Fatalf("after a restart the outbox holds %d events (%v), want 2", len(pending), err)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	d := newDispatcher(db, url, &outcomes{})
	run(t, d)
	publishAndDrain(t, db, "did:plc:bob", "laptop")
	d.Notify()

	testkit.Eventually(t, "the outbox to empty", func() bool { return len(pendingEvents(t, db)) == 0 })
	got, _ := rc.snapshot()
	if len(got) != 4 {
		t.Fatalf("delivered %v, want 4 events", didTypes(got))
	}
	// Each device's events in order; the two devices' in any order.
	gotBy := byDevice(got)
	for _, did := range []string{"did:plc:alice", "did:plc:bob"} {
		device := map[string]string{"did:plc:alice": "phone", "did:plc:bob": "laptop"}[did]
		types := didTypes(gotBy[did+" "+device])
		if want := []string{did + " " + kpd.EventKeyPackagesLow, did + " " + kpd.EventKeyPackagesExhausted}; !slices.Equal(types, want) {
			t.Fatalf("delivered %v for %s, want %v", types, did, want)
		}
	}
	if ids := []string{gotBy["did:plc:alice phone"][0].ID, pending[0].ID}; ids[0] != ids[1] {
		t.Fatalf("event id %s delivered as %s: ids must be stable", ids[1], ids[0])
	}
}

// pendingEvents returns every event in db's outbox.
// didTypes describes each event as "DID type", in order.
func didTypes(evs []kpd.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.DID+" "+ev.Type)
	}
	return out
}

// pendingEvents returns the undelivered events of db's outbox.
func pendingEvents(t *testing.T, db *kv.DB) []kpd.Event {
	t.Helper()
	evs, err := db.PendingEvents(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// eventIDs lists the ids of evs.
func eventIDs(evs []kpd.Event) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	return ids
}

// refusedFirst is a dispatcher over a store whose receiver answers 400, for
// ever, to alice's first event (a1) and accepts every other one; alice's
// second event (a2) waits behind a1.
type refusedFirst struct {
	db       *kv.DB
	clock    *testkit.Clock
	rc       *receiver
	obs      *outcomes
	logs     *testkit.SyncBuffer
	a1, a2   kpd.Event
	backoffs atomic.Int64
}

// startRefusedFirst starts the dispatcher of a refusedFirst with maxAge,
// once bob's first two events are in the outbox behind alice's.
func startRefusedFirst(t *testing.T, maxAge time.Duration) *refusedFirst {
	t.Helper()
	f := &refusedFirst{clock: testkit.NewClock(eventsAt), obs: &outcomes{}, logs: &testkit.SyncBuffer{}}
	f.db = openOutboxAt(t, filepath.Join(t.TempDir(), "kpd.db"), f.clock.Now)
	t.Cleanup(func() { f.db.Close() })
	publishAndDrain(t, f.db, "did:plc:alice", "phone")
	evs := pendingEvents(t, f.db)
	f.a1, f.a2 = evs[0], evs[1]
	publishAndDrain(t, f.db, "did:plc:bob", "laptop")
	var url string
	// The tests move the clock by up to a year while a1's retries are in
	// flight: one signed before a move arrives after it.
	f.rc, url = startReceiver(t, &receiver{now: f.clock.Now, failStatus: http.StatusBadRequest, tolerance: 400 * 24 * time.Hour,
		fail: func(ev kpd.Event, _ int) bool { return ev.ID == f.a1.ID }})
	d := newDispatcher(f.db, url, f.obs)
	d.Clock = f.clock.Now
	d.MaxAge = maxAge
	d.Logger = zerolog.New(f.logs)
	d.Backoff = func(int) time.Duration {
		f.backoffs.Add(1)
		return 10 * time.Millisecond
	}
	run(t, d)
	return f
}

// attemptsOf returns how often the receiver saw ev.
func (f *refusedFirst) attemptsOf(ev kpd.Event) int {
	_, attempts := f.rc.snapshot()
	return attempts[ev.ID]
}

// waitRetries waits for a1 to fail n more times.
func (f *refusedFirst) waitRetries(t *testing.T, n int) {
	t.Helper()
	want := f.attemptsOf(f.a1) + n
	testkit.Eventually(t, "more attempts of a1", func() bool { return f.attemptsOf(f.a1) >= want })
}

// wantBlocked checks that a1 and a2 are in the outbox, a2 was never sent,
// and nothing was dropped.
func (f *refusedFirst) wantBlocked(t *testing.T, step string) {
	t.Helper()
	if ids := eventIDs(pendingEvents(t, f.db)); len(ids) < 2 || ids[0] != f.a1.ID || ids[1] != f.a2.ID {
		t.Fatalf("%s: outbox %v, want %s and %s first", step, ids, f.a1.ID, f.a2.ID)
	}
	if n := f.attemptsOf(f.a2); n != 0 {
		t.Fatalf("%s: a2 attempted %d times while a1 fails", step, n)
	}
	if n := f.obs.get(webhook.OutcomeGivenUp); n != 0 {
		t.Fatalf("%s: observer saw %d drops", step, n)
	}
}

// A receiver that refuses an event for ever holds up that device's later
// events until the event is older than MaxAge; the event is then dropped
// (deleted, observed, logged) and the device's next event goes out. Other
// devices' events are delivered throughout.
func TestDispatcherGivesUpOldEvents(t *testing.T) {
	const maxAge = time.Hour
	f := startRefusedFirst(t, maxAge)
	testkit.Eventually(t, "bob's events", func() bool { got, _ := f.rc.snapshot(); return len(got) == 2 })
	f.waitRetries(t, 2)
	f.wantBlocked(t, "a1 younger than the maximum age")

	// Exactly MaxAge old is not older than MaxAge. Bob goes on meanwhile.
	f.clock.Advance(maxAge)
	publishAndDrain(t, f.db, "did:plc:bob", "tablet")
	testkit.Eventually(t, "bob's new events", func() bool { got, _ := f.rc.snapshot(); return len(got) == 4 })
	f.waitRetries(t, 2)
	f.wantBlocked(t, "a1 exactly the maximum age")

	f.clock.Advance(time.Second)
	testkit.Eventually(t, "the outbox to empty", func() bool { return len(pendingEvents(t, f.db)) == 0 })
	got, attempts := f.rc.snapshot()
	order := didTypes(got)
	want := []string{
		"did:plc:bob " + kpd.EventKeyPackagesLow, "did:plc:bob " + kpd.EventKeyPackagesExhausted,
		"did:plc:bob " + kpd.EventKeyPackagesLow, "did:plc:bob " + kpd.EventKeyPackagesExhausted,
		"did:plc:alice " + kpd.EventKeyPackagesExhausted,
	}
	if !slices.Equal(order, want) {
		t.Fatalf("accepted %v, want %v", order, want)
	}
	if attempts[f.a2.ID] != 1 {
		t.Fatalf("a2 attempted %d times, want once", attempts[f.a2.ID])
	}
	// Every attempt of a1 but the last failed and was retried after a
	// backoff; the last one dropped it, with no backoff.
	if dropped, failed := f.obs.get(webhook.OutcomeGivenUp), f.obs.get(webhook.OutcomeFailed); dropped != 1 || failed != attempts[f.a1.ID]-1 {
		t.Fatalf("observer: %d dropped, %d failed; want 1 and %d", dropped, failed, attempts[f.a1.ID]-1)
	}
	if n := f.backoffs.Load(); n != int64(attempts[f.a1.ID]-1) {
		t.Fatalf("%d backoffs for %d attempts of a1, want one per failure before the drop", n, attempts[f.a1.ID])
	}
	if n := f.obs.get(webhook.OutcomeDelivered); n != 5 {
		t.Fatalf("observer saw %d deliveries, want 5", n)
	}

	var drops []map[string]any
	for _, line := range f.logs.JSONLines(t) {
		if line["level"] == "error" {
			drops = append(drops, line)
		}
	}
	if len(drops) != 1 || drops[0]["event_id"] != f.a1.ID || drops[0]["type"] != f.a1.Type ||
		drops[0]["age"] != float64((maxAge+time.Second)/time.Millisecond) || drops[0]["max_age"] != float64(maxAge/time.Millisecond) {
		t.Fatalf("error lines %v, want one for the drop of %s with its type, age and the maximum age", drops, f.a1.ID)
	}
	if out := f.logs.String(); strings.Contains(out, secretString) || strings.Contains(out, `"seq"`) {
		t.Fatalf("the log shows the secret or an event body:\n%s", out)
	}
}

// With MaxAge 0 an event is never given up, however old.
func TestDispatcherWithoutMaxAgeNeverGivesUp(t *testing.T) {
	f := startRefusedFirst(t, 0)
	testkit.Eventually(t, "bob's events", func() bool { got, _ := f.rc.snapshot(); return len(got) == 2 })
	f.clock.Advance(365 * 24 * time.Hour)
	f.waitRetries(t, 3)
	f.wantBlocked(t, "a1 a year old")
	// The last attempt the receiver saw may not be observed yet.
	attempts := f.attemptsOf(f.a1)
	if n := f.obs.get(webhook.OutcomeFailed); n < attempts-1 {
		t.Fatalf("observer saw %d failures for %d attempts, want each counted as failed", n, attempts)
	}
}
