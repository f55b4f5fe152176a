package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/webhook"
)

// eventsAt is the clock of the dispatcher tests.
var eventsAt = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// memOutbox is an outbox in memory with the semantics of kv's.
type memOutbox struct {
	mu      sync.Mutex
	events  []kpd.Event // in Seq order
	seq     uint64
	deletes int
}

func (o *memOutbox) add(typ, did, device string) kpd.Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq++
	ev := kpd.Event{ID: fmt.Sprintf("ev-%d", o.seq), Type: typ,
		Seq: o.seq, DID: did, Device: device, CreatedAt: eventsAt}
	o.events = append(o.events, ev)
	return ev
}

func (o *memOutbox) PendingEvents(ctx context.Context, after uint64, limit int) ([]kpd.Event, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []kpd.Event
	for _, ev := range o.events {
		if ev.Seq > after && len(out) < limit {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (o *memOutbox) DeleteEvents(ctx context.Context, seqs []uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.deletes++
	o.events = slices.DeleteFunc(o.events, func(ev kpd.Event) bool { return slices.Contains(seqs, ev.Seq) })
	return nil
}

func (o *memOutbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.events)
}

// receiver is a webhook endpoint that verifies every request's signature
// against its clock and records the events it accepted, in arrival order.
// fail decides, per event, whether to answer failStatus instead.
type receiver struct {
	t          *testing.T
	now        func() time.Time
	fail       func(ev kpd.Event, attempt int) bool
	failStatus int
	// tolerance is how far a signature's time may be from now; 0 means a
	// minute.
	tolerance time.Duration
	mu        sync.Mutex
	accepted  []kpd.Event
	attempts  map[string]int // by event id
	got       chan struct{}
}

// newReceiver starts a receiver whose clock reads eventsAt and whose
// failures are 503s.
func newReceiver(t *testing.T, fail func(kpd.Event, int) bool) (*receiver, string) {
	return startReceiver(t, &receiver{now: func() time.Time { return eventsAt }, fail: fail, failStatus: http.StatusServiceUnavailable})
}

// startReceiver serves rc (with its now, fail and failStatus set) on
// loopback until the test ends, and returns it with its URL.
func startReceiver(t *testing.T, rc *receiver) (*receiver, string) {
	rc.t, rc.attempts, rc.got = t, map[string]int{}, make(chan struct{}, 1000)
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return rc, srv.URL
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		rc.t.Errorf("read body: %v", err)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		rc.t.Errorf("request %s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
	}
	tolerance := rc.tolerance
	if tolerance == 0 {
		tolerance = time.Minute
	}
	if err := webhook.Verify(secret, r.Header.Get(webhook.SignatureHeader), body, rc.now(), tolerance); err != nil {
		rc.t.Errorf("signature: %v", err)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var ev kpd.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		rc.t.Errorf("body %s: %v", body, err)
		return
	}
	if id := r.Header.Get(webhook.EventIDHeader); id != ev.ID || r.Header.Get(webhook.EventTypeHeader) != ev.Type {
		rc.t.Errorf("headers id %q type %q for event %s of type %s", id, r.Header.Get(webhook.EventTypeHeader), ev.ID, ev.Type)
	}
	rc.mu.Lock()
	rc.attempts[ev.ID]++
	fail := rc.fail != nil && rc.fail(ev, rc.attempts[ev.ID])
	if !fail {
		rc.accepted = append(rc.accepted, ev)
	}
	rc.mu.Unlock()
	rc.got <- struct{}{}
	if fail {
		http.Error(w, "refused", rc.failStatus)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) snapshot() ([]kpd.Event, map[string]int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.accepted), maps.Clone(rc.attempts)
}

// outcomes counts the Observer's calls.
type outcomes struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *outcomes) observe(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[outcome]++
}

func (o *outcomes) get(outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[outcome]
}

// run starts d and returns a function that stops it and waits for Run to
// return.
func run(t *testing.T, d *webhook.Dispatcher) (stop func()) {
	t.Helper()
	return testkit.Start(t, d.Run)
}

func newDispatcher(src webhook.Source, url string, obs *outcomes) *webhook.Dispatcher {
	return &webhook.Dispatcher{
		Source:       src,
		URL:          url,
		Secret:       secret,
		Clock:        func() time.Time { return eventsAt },
		Logger:       zerolog.Nop(),
		Observer:     obs.observe,
		PollInterval: 10 * time.Millisecond,
		Backoff:      func(int) time.Duration { return 20 * time.Millisecond },
	}
}

// Every event is delivered once, each device's in Seq order, and deleted.
func TestDispatcherDeliversInSeqOrderAndDeletes(t *testing.T) {
	src := &memOutbox{}
	var want []kpd.Event
	// More than one page of the outbox.
	for i := range 250 {
		want = append(want, src.add(kpd.EventWelcomePending, "did:plc:a", []string{"d1", "d2", "d3"}[i%3]))
	}
	rc, url := newReceiver(t, nil)
	obs := &outcomes{}
	run(t, newDispatcher(src, url, obs))

	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	got, attempts := rc.snapshot()
	if len(got) != len(want) {
		t.Fatalf("receiver accepted %d events, want %d", len(got), len(want))
	}
	gotBy, wantBy := byDevice(got), byDevice(want)
	for device, want := range wantBy {
		got := gotBy[device]
		if len(got) != len(want) {
			t.Fatalf("device %s: accepted %d events, want %d", device, len(got), len(want))
		}
		for i := range want {
			if got[i].ID != want[i].ID || got[i].Seq != want[i].Seq || !got[i].CreatedAt.Equal(want[i].CreatedAt) || got[i].Device != want[i].Device {
				t.Fatalf("device %s: event %d = %+v, want %+v", device, i, got[i], want[i])
			}
			if attempts[want[i].ID] != 1 {
				t.Fatalf("event %s attempted %d times, want once", want[i].ID, attempts[want[i].ID])
			}
		}
	}
	if n := obs.get(webhook.OutcomeDelivered); n != len(want) {
		t.Fatalf("observer saw %d deliveries, want %d", n, len(want))
	}
	if n := obs.get(webhook.OutcomeFailed); n != 0 {
		t.Fatalf("observer saw %d failures, want 0", n)
	}
}

// byDevice splits events by DID and device, keeping their order.
func byDevice(events []kpd.Event) map[string][]kpd.Event {
	out := map[string][]kpd.Event{}
	for _, ev := range events {
		key := ev.DID + " " + ev.Device
		out[key] = append(out[key], ev)
	}
	return out
}

// gate is a webhook endpoint in front of a receiver that records how many
// requests are in flight, in all and per device, and holds the first
// requests until hold of them are in flight at once.
type gate struct {
	t    *testing.T
	next http.Handler
	hold int

	mu          sync.Mutex
	inFlight    int
	maxInFlight int
	perDevice   map[string]int
	overlap     string // a device that had two requests in flight
	open        chan struct{}
	opened      bool
}

func newGate(t *testing.T, next http.Handler, hold int) *gate {
	return &gate{t: t, next: next, hold: hold, perDevice: map[string]int{}, open: make(chan struct{})}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		g.t.Errorf("read body: %v", err)
		return
	}
	var ev kpd.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		g.t.Errorf("body %s: %v", body, err)
		return
	}
	device := ev.DID + " " + ev.Device
	g.mu.Lock()
	g.inFlight++
	g.maxInFlight = max(g.maxInFlight, g.inFlight)
	if g.perDevice[device]++; g.perDevice[device] > 1 {
		g.overlap = device
	}
	if g.inFlight >= g.hold && !g.opened {
		g.opened = true
		close(g.open)
	}
	g.mu.Unlock()

	select {
	case <-g.open:
	case <-time.After(10 * time.Second):
		g.mu.Lock()
		if !g.opened {
			g.t.Errorf("the first requests were not in flight together: at most %d at once, want %d", g.maxInFlight, g.hold)
			g.opened = true
			close(g.open)
		}
		g.mu.Unlock()
	}
	r.Body = io.NopCloser(strings.NewReader(string(body)))
	g.next.ServeHTTP(w, r)

	g.mu.Lock()
	g.inFlight--
	g.perDevice[device]--
	g.mu.Unlock()
}

// Different devices' events are delivered concurrently, at most
// Concurrency at once, and never two of one device at a time.
func TestDispatcherDeliversDevicesConcurrently(t *testing.T) {
	const concurrency = 3
	src := &memOutbox{}
	var want []kpd.Event
	for i := range 40 {
		want = append(want, src.add(kpd.EventWelcomePending, fmt.Sprintf("did:plc:%d", i%10), "phone"))
	}
	rc := &receiver{now: func() time.Time { return eventsAt }, failStatus: http.StatusServiceUnavailable}
	rc.t, rc.attempts, rc.got = t, map[string]int{}, make(chan struct{}, 1000)
	g := newGate(t, rc, concurrency)
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	d := newDispatcher(src, srv.URL, &outcomes{})
	d.Concurrency = concurrency
	run(t, d)

	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	g.mu.Lock()
	maxInFlight, overlap := g.maxInFlight, g.overlap
	g.mu.Unlock()
	if maxInFlight != concurrency {
		t.Fatalf("at most %d requests in flight at once, want %d", maxInFlight, concurrency)
	}
	if overlap != "" {
		t.Fatalf("two events of %s were in flight at once", overlap)
	}
	got, _ := rc.snapshot()
	gotBy := byDevice(got)
	for device, want := range byDevice(want) {
		var ids, wantIDs []string
		for _, ev := range gotBy[device] {
			ids = append(ids, ev.ID)
		}
		for _, ev := range want {
			wantIDs = append(wantIDs, ev.ID)
		}
		if !slices.Equal(ids, wantIDs) {
			t.Fatalf("%s: accepted %v, want %v", device, ids, wantIDs)
		}
	}
}

// A failing event blocks its device's later events but not other devices'.
func TestDispatcherKeepsPerDeviceOrderAcrossFailures(t *testing.T) {
	src := &memOutbox{}
	a1 := src.add(kpd.EventKeyPackagesLow, "did:plc:a", "phone")
	b1 := src.add(kpd.EventWelcomePending, "did:plc:b", "laptop")
	a2 := src.add(kpd.EventKeyPackagesExhausted, "did:plc:a", "phone")
	b2 := src.add(kpd.EventWelcomePending, "did:plc:b", "laptop")
	a3 := src.add(kpd.EventLastResortServed, "did:plc:a", "phone")

	// a1 fails its first three attempts.
	rc, url := newReceiver(t, func(ev kpd.Event, attempt int) bool { return ev.ID == a1.ID && attempt <= 3 })
	obs := &outcomes{}
	d := newDispatcher(src, url, obs)
	var backoffs []int
	var mu sync.Mutex
	d.Backoff = func(n int) time.Duration {
		mu.Lock()
		defer mu.Unlock()
		backoffs = append(backoffs, n)
		return 30 * time.Millisecond
	}
	run(t, d)

	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	got, attempts := rc.snapshot()
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.ID)
	}
	// b's events went through while a1 was failing; a's followed in order.
	if want := []string{b1.ID, b2.ID, a1.ID, a2.ID, a3.ID}; !slices.Equal(ids, want) {
		t.Fatalf("accepted %v, want %v", ids, want)
	}
	if attempts[a1.ID] != 4 || attempts[a2.ID] != 1 || attempts[a3.ID] != 1 {
		t.Fatalf("attempts = %v: a1 4 (3 failures), later events of its device once each", attempts)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(backoffs, []int{1, 2, 3}) {
		t.Fatalf("backoff asked for failures %v, want [1 2 3]", backoffs)
	}
	if obs.get(webhook.OutcomeFailed) != 3 || obs.get(webhook.OutcomeDelivered) != 5 {
		t.Fatalf("observer: %d failed, %d delivered; want 3 and 5", obs.get(webhook.OutcomeFailed), obs.get(webhook.OutcomeDelivered))
	}
}

// Undelivered events stay in the outbox across a stop; the next dispatcher
// delivers them with the same ids.
func TestDispatcherResumesAfterRestart(t *testing.T) {
	src := &memOutbox{}
	ev := src.add(kpd.EventWelcomePending, "did:plc:a", "phone")
	down := true
	var mu sync.Mutex
	rc, url := newReceiver(t, func(kpd.Event, int) bool {
		mu.Lock()
		defer mu.Unlock()
		return down
	})
	stop := run(t, newDispatcher(src, url, &outcomes{}))
	<-rc.got
	stop()
	if src.len() != 1 {
		t.Fatalf("outbox holds %d events after failed attempts, want 1", src.len())
	}

	mu.Lock()
	down = false
	mu.Unlock()
	run(t, newDispatcher(src, url, &outcomes{}))
	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	got, _ := rc.snapshot()
	if len(got) != 1 || got[0].ID != ev.ID {
		t.Fatalf("accepted %+v, want the one event %s", got, ev.ID)
	}
}

// Notify wakes the dispatcher without waiting for the poll interval.
func TestDispatcherNotify(t *testing.T) {
	src := &memOutbox{}
	rc, url := newReceiver(t, nil)
	d := newDispatcher(src, url, &outcomes{})
	d.PollInterval = time.Hour
	run(t, d)
	// Let the first pass (at start) find the outbox empty.
	time.Sleep(50 * time.Millisecond)

	src.add(kpd.EventWelcomePending, "did:plc:a", "phone")
	start := time.Now()
	d.Notify()
	select {
	case <-rc.got:
	case <-time.After(5 * time.Second):
		t.Fatal("Notify did not wake the dispatcher")
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Fatalf("delivery took %v after Notify", elapsed)
	}
}

// Run returns promptly when its context ends, even while the receiver
// hangs, and the event stays in the outbox.
func TestDispatcherStopsDuringDelivery(t *testing.T) {
	src := &memOutbox{}
	src.add(kpd.EventWelcomePending, "did:plc:a", "phone")
	entered := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		close(entered)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	obs := &outcomes{}
	stop := run(t, newDispatcher(src, srv.URL, obs))
	<-entered
	start := time.Now()
	stop()
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Fatalf("Run took %v to return", elapsed)
	}
	if src.len() != 1 || obs.get(webhook.OutcomeFailed) != 0 || obs.get(webhook.OutcomeDelivered) != 0 {
		t.Fatalf("after an abandoned attempt: outbox %d, failed %d, delivered %d; want 1, 0, 0",
			src.len(), obs.get(webhook.OutcomeFailed), obs.get(webhook.OutcomeDelivered))
	}
}

// A receiver that times out counts as a failure and is retried.
func TestDispatcherClientTimeout(t *testing.T) {
	src := &memOutbox{}
	src.add(kpd.EventWelcomePending, "did:plc:a", "phone")
	var mu sync.Mutex
	calls := 0
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Reading the body lets the server notice the client hanging up.
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	obs := &outcomes{}
	d := newDispatcher(src, srv.URL+"/hook?token=receiver-credential", obs)
	d.Client = &http.Client{Timeout: 50 * time.Millisecond}
	logs := &testkit.SyncBuffer{}
	d.Logger = zerolog.New(logs)
	run(t, d)
	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	if obs.get(webhook.OutcomeFailed) != 1 || obs.get(webhook.OutcomeDelivered) != 1 {
		t.Fatalf("observer: %d failed, %d delivered; want 1 and 1", obs.get(webhook.OutcomeFailed), obs.get(webhook.OutcomeDelivered))
	}
	out := logs.String()
	if !strings.Contains(out, "webhook delivery failed") || !strings.Contains(out, "Timeout") {
		t.Errorf("the failure is not logged with its cause:\n%s", out)
	}
	if strings.Contains(out, "receiver-credential") || strings.Contains(out, secretString) {
		t.Errorf("the log shows the URL's query or the secret:\n%s", out)
	}
}

// flakyDeletes is an outbox whose first DeleteEvents fails.
type flakyDeletes struct {
	*memOutbox
	mu     sync.Mutex
	failed bool
}

func (f *flakyDeletes) DeleteEvents(ctx context.Context, seqs []uint64) error {
	f.mu.Lock()
	first := !f.failed
	f.failed = true
	f.mu.Unlock()
	if first {
		return errors.New("disk full")
	}
	return f.memOutbox.DeleteEvents(ctx, seqs)
}

// Events whose deletion failed are delivered again (same id) and then
// deleted: at least once, never lost in the outbox.
func TestDispatcherRedeliversAfterDeleteFailure(t *testing.T) {
	src := &flakyDeletes{memOutbox: &memOutbox{}}
	ev := src.add(kpd.EventWelcomePending, "did:plc:a", "phone")
	rc, url := newReceiver(t, nil)
	run(t, newDispatcher(src, url, &outcomes{}))
	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	got, attempts := rc.snapshot()
	if attempts[ev.ID] != 2 || len(got) != 2 || got[1].ID != ev.ID {
		t.Fatalf("attempts %v, accepted %d; want the event delivered twice", attempts, len(got))
	}
}

// Events added while a device is blocked wait behind its failing event,
// also when a Notify makes the dispatcher read only the new events.
func TestDispatcherNewEventsWaitBehindFailure(t *testing.T) {
	src := &memOutbox{}
	a1 := src.add(kpd.EventKeyPackagesLow, "did:plc:a", "phone")
	var mu sync.Mutex
	failing := true
	rc, url := newReceiver(t, func(ev kpd.Event, _ int) bool {
		mu.Lock()
		defer mu.Unlock()
		return failing && ev.ID == a1.ID
	})
	d := newDispatcher(src, url, &outcomes{})
	d.PollInterval = 50 * time.Millisecond
	d.Backoff = func(int) time.Duration { return 100 * time.Millisecond }
	run(t, d)
	<-rc.got // a1 failed once

	a2 := src.add(kpd.EventKeyPackagesExhausted, "did:plc:a", "phone")
	b1 := src.add(kpd.EventWelcomePending, "did:plc:b", "laptop")
	d.Notify()
	testkit.Eventually(t, "b's event", func() bool { got, _ := rc.snapshot(); return len(got) == 1 })
	if got, _ := rc.snapshot(); got[0].ID != b1.ID {
		t.Fatalf("accepted %s first, want b's %s (a's events wait behind a1)", got[0].ID, b1.ID)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	testkit.Eventually(t, "the outbox to empty", func() bool { return src.len() == 0 })
	got, _ := rc.snapshot()
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.ID)
	}
	if want := []string{b1.ID, a1.ID, a2.ID}; !slices.Equal(ids, want) {
		t.Fatalf("accepted %v, want %v", ids, want)
	}
}

// secretString is the signing secret as text, to look for in logs.
var secretString = string(secret)

// A redirect is a failed attempt, not followed: a followed 302 would turn
// the POST into a GET without the event, whose 200 would delete the event
// as delivered.
func TestDispatcherDoesNotFollowRedirects(t *testing.T) {
	var posts, gets atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/hook", func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		http.Redirect(w, r, "/login", http.StatusFound)
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	src := &memOutbox{}
	src.add(kpd.EventWelcomePending, "did:plc:a", "phone")
	obs := &outcomes{}
	d := newDispatcher(src, srv.URL+"/hook", obs)
	d.Client = &http.Client{Timeout: 5 * time.Second} // follows redirects by default
	stop := run(t, d)
	testkit.Eventually(t, "two failed attempts", func() bool { return obs.get(webhook.OutcomeFailed) >= 2 })
	stop()
	if gets.Load() != 0 || obs.get(webhook.OutcomeDelivered) != 0 || src.len() != 1 {
		t.Errorf("after %d POSTs: %d redirects followed, %d delivered, %d events left; want 0, 0, 1",
			posts.Load(), gets.Load(), obs.get(webhook.OutcomeDelivered), src.len())
	}
}
