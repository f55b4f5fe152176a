package httpapi_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
)

// waitSpy is the kv store that reports each WaitWelcome call, so that a
// test knows when a listing has started waiting.
type waitSpy struct {
	*kv.DB
	registered chan string // the device of each WaitWelcome call
}

func (w *waitSpy) WaitWelcome(did, device string) (<-chan struct{}, func()) {
	ch, cancel := w.DB.WaitWelcome(did, device)
	w.registered <- device
	return ch, cancel
}

// longPollServer starts a server whose store is a waitSpy, with cfg applied
// to its configuration.
func longPollServer(t *testing.T, cfg func(*httpapi.Config)) (*testServer, *waitSpy) {
	spy := &waitSpy{registered: make(chan string, 100)}
	s := start(t, func(o *options) {
		o.wrap = func(kpd.Store) kpd.Store { return spy }
		o.config = cfg
	})
	spy.DB = s.db
	return s, spy
}

// addDevice publishes a KeyPackage for alice's device (creating the
// device) and returns its ref.
func addDevice(t *testing.T, s *testServer, device string) kpd.Ref {
	t.Helper()
	kp, ref := s.keyPackage(1, alice+"#"+device, false)
	must(s.as(alice).Publish(context.Background(), device, [][]byte{kp}))(t)
	return ref
}

// claimFor publishes a KeyPackage for alice's device and has bob claim it;
// it returns the ref, ready for a Welcome.
func claimFor(t *testing.T, s *testServer, device string) kpd.Ref {
	t.Helper()
	ref := addDevice(t, s, device)
	must(s.as(bob).Claim(context.Background(), client.ClaimRequest{CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: alice, Devices: []string{device}}}}))(t)
	return ref
}

// listing is the outcome of a listing run in the background.
type listing struct {
	welcomes []kpd.PendingWelcome
	err      error
	at       time.Time
}

// listAsync lists alice's device's Welcomes with opts in the background.
func listAsync(ctx context.Context, s *testServer, device string, opts client.ListOptions) <-chan listing {
	return listAsyncAs(ctx, s, alice, device, opts)
}

// listAsyncAs lists did's device's Welcomes with opts in the background.
func listAsyncAs(ctx context.Context, s *testServer, did, device string, opts client.ListOptions) <-chan listing {
	out := make(chan listing, 1)
	go func() {
		ws, err := s.as(did).Welcomes(ctx, device, opts)
		out <- listing{ws, err, time.Now()}
	}()
	return out
}

// registered waits for a listing of device to start waiting.
func (w *waitSpy) awaitRegistration(t *testing.T, device string) {
	t.Helper()
	select {
	case got := <-w.registered:
		if got != device {
			t.Fatalf("a listing of %s waits, want %s", got, device)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no listing of %s started waiting", device)
	}
}

// receive returns the listing, failing the test after 10 s.
func receive(t *testing.T, ch <-chan listing) listing {
	t.Helper()
	select {
	case l := <-ch:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("the listing did not return")
		return listing{}
	}
}

func TestLongPollReturnsWhenWelcomeCommits(t *testing.T) {
	s, spy := longPollServer(t, nil)
	ref := claimFor(t, s, "dev1")
	w := s.welcome(s.suite(1), ref)

	result := listAsync(context.Background(), s, "dev1", client.ListOptions{Wait: 30 * time.Second})
	spy.awaitRegistration(t, "dev1")
	posted := time.Now()
	res := must(s.as(bob).PostWelcome(context.Background(), "c1", w))(t)
	l := receive(t, result)
	if l.err != nil {
		t.Fatal(l.err)
	}
	if len(l.welcomes) != 1 || l.welcomes[0].WelcomeID != res.WelcomeID || l.welcomes[0].Ref != ref {
		t.Fatalf("listing = %+v, want the posted Welcome %s", l.welcomes, res.WelcomeID)
	}
	elapsed := l.at.Sub(posted)
	if elapsed >= 100*time.Millisecond {
		t.Fatalf("the waiting listing returned %v after the post; want < 100ms", elapsed)
	}
	t.Logf("the waiting listing returned %v after the post began", elapsed)
}

// A Welcome for another device does not end the wait; the listing ends
// empty when its wait does.
func TestLongPollIgnoresOtherDevices(t *testing.T) {
	s, spy := longPollServer(t, nil)
	ref := claimFor(t, s, "dev1")
	addDevice(t, s, "dev2")
	const wait = 500 * time.Millisecond

	start := time.Now()
	result := listAsync(context.Background(), s, "dev2", client.ListOptions{Wait: wait})
	spy.awaitRegistration(t, "dev2")
	must(s.as(bob).PostWelcome(context.Background(), "c1", s.welcome(s.suite(1), ref)))(t)
	l := receive(t, result)
	if l.err != nil || len(l.welcomes) != 0 {
		t.Fatalf("dev2's listing = %+v, %v; want empty", l.welcomes, l.err)
	}
	if elapsed := l.at.Sub(start); elapsed < wait {
		t.Fatalf("dev2's listing returned after %v, before its wait of %v ended", elapsed, wait)
	}
	if got := must(s.as(alice).Welcomes(context.Background(), "dev1", client.ListOptions{}))(t); len(got) != 1 {
		t.Fatalf("dev1 has %d pending Welcomes, want 1", len(got))
	}
}

func TestLongPollEndsEmptyAfterWait(t *testing.T) {
	s, _ := longPollServer(t, nil)
	addDevice(t, s, "dev1")
	const wait = 300 * time.Millisecond
	start := time.Now()
	got := must(s.as(alice).Welcomes(context.Background(), "dev1", client.ListOptions{Wait: wait}))(t)
	elapsed := time.Since(start)
	if len(got) != 0 {
		t.Fatalf("listing = %+v, want empty", got)
	}
	if elapsed < wait || elapsed > wait+5*time.Second {
		t.Fatalf("listing took %v, want about %v", elapsed, wait)
	}
	// A wait given in seconds is honoured too.
	start = time.Now()
	resp := s.do(http.MethodGet, "/v1/devices/dev1/welcomes?wait=0.2", alice, "", nil)
	if resp.StatusCode != http.StatusOK || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("?wait=0.2: status %d after %v, want 200 after at least 200ms", resp.StatusCode, time.Since(start))
	}
}

// A listing filtered by conversation keeps waiting through a Welcome of
// another conversation and returns with one of its own.
func TestLongPollConvoFilter(t *testing.T) {
	s, spy := longPollServer(t, nil)
	other, mine := claimFor(t, s, "dev1"), claimFor(t, s, "dev1")
	result := listAsync(context.Background(), s, "dev1", client.ListOptions{ConvoID: "mine", Wait: 30 * time.Second})
	spy.awaitRegistration(t, "dev1")

	must(s.as(bob).PostWelcome(context.Background(), "other", s.welcome(s.suite(1), other)))(t)
	spy.awaitRegistration(t, "dev1") // woken, listed nothing of "mine", waits again
	select {
	case l := <-result:
		t.Fatalf("the listing returned %+v (%v) on a Welcome of another conversation", l.welcomes, l.err)
	default:
	}
	must(s.as(bob).PostWelcome(context.Background(), "mine", s.welcome(s.suite(1), mine)))(t)
	l := receive(t, result)
	if l.err != nil || len(l.welcomes) != 1 || l.welcomes[0].ConvoID != "mine" || l.welcomes[0].Ref != mine {
		t.Fatalf("listing = %+v, %v; want the Welcome of conversation mine", l.welcomes, l.err)
	}
}

// Closing Config.Done (the server shutting down) ends waiting listings at
// once, with what is pending.
func TestLongPollReleasedOnShutdown(t *testing.T) {
	done := make(chan struct{})
	s, spy := longPollServer(t, func(c *httpapi.Config) { c.Done = done })
	addDevice(t, s, "dev1")
	result := listAsync(context.Background(), s, "dev1", client.ListOptions{Wait: 60 * time.Second})
	spy.awaitRegistration(t, "dev1")
	closed := time.Now()
	close(done)
	l := receive(t, result)
	if l.err != nil || len(l.welcomes) != 0 {
		t.Fatalf("listing = %+v, %v; want empty", l.welcomes, l.err)
	}
	if elapsed := l.at.Sub(closed); elapsed > time.Second {
		t.Fatalf("the listing returned %v after shutdown began", elapsed)
	}
}

// Beyond MaxWaiters, a listing that would wait fails with 503 and
// Retry-After; a slot frees when a waiting client goes away.
func TestLongPollMaxWaiters(t *testing.T) {
	s, spy := longPollServer(t, func(c *httpapi.Config) { c.MaxWaiters = 1 })
	addDevice(t, s, "dev1")
	addDevice(t, s, "dev2")
	ctx, cancel := context.WithCancel(context.Background())
	first := listAsync(ctx, s, "dev1", client.ListOptions{Wait: 60 * time.Second})
	spy.awaitRegistration(t, "dev1")

	resp := s.do(http.MethodGet, "/v1/devices/dev2/welcomes?wait=10s", alice, "", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second waiter: status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := s.do(http.MethodGet, "/v1/devices/dev2/welcomes", alice, "", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("a listing without wait: status %d, want 200", resp.StatusCode)
	}

	cancel()
	if l := receive(t, first); l.err == nil {
		t.Fatal("the cancelled listing returned no error")
	}
	// The server notices the client going away and frees the slot.
	awaitSlot(t, s, "dev2", "the slot of a listing whose client went away was not freed")
}

// awaitSlot waits until a waiting listing of alice's device is no longer
// refused as Unavailable, failing the test with msg after 5 s.
func awaitSlot(t *testing.T, s *testServer, device, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := receive(t, listAsync(context.Background(), s, device, client.ListOptions{Wait: 50 * time.Millisecond}))
		if l.err == nil {
			return
		}
		wantCode(t, l.err, kpd.CodeUnavailable)
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Beyond MaxWaitersPerDID, a DID's listing that would wait fails with 503
// and Retry-After (one that finds a Welcome is answered), while another
// DID's listing still waits; a slot frees when a listing of the DID ends.
func TestLongPollMaxWaitersPerDID(t *testing.T) {
	s, spy := longPollServer(t, func(c *httpapi.Config) { c.MaxWaitersPerDID = 2 })
	addDevice(t, s, "dev1")
	addDevice(t, s, "dev2")
	ref := claimFor(t, s, "dev3")
	kp, _ := s.keyPackage(1, bob+"#laptop", false)
	must(s.as(bob).Publish(context.Background(), "laptop", [][]byte{kp}))(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := listAsync(ctx, s, "dev1", client.ListOptions{Wait: 60 * time.Second})
	spy.awaitRegistration(t, "dev1")
	second := listAsync(ctx, s, "dev2", client.ListOptions{Wait: 60 * time.Second})
	spy.awaitRegistration(t, "dev2")

	_, err := s.as(alice).Welcomes(context.Background(), "dev3", client.ListOptions{Wait: 10 * time.Second})
	if e := wantCode(t, err, kpd.CodeUnavailable); e.RetryAfter <= 0 {
		t.Fatalf("a third waiter of alice's: %v without Retry-After", err)
	}
	bobs := listAsyncAs(ctx, s, bob, "laptop", client.ListOptions{Wait: 60 * time.Second})
	spy.awaitRegistration(t, "laptop")

	res := must(s.as(bob).PostWelcome(context.Background(), "c1", s.welcome(s.suite(1), ref)))(t)
	got := must(s.as(alice).Welcomes(context.Background(), "dev3", client.ListOptions{Wait: 10 * time.Second}))(t)
	if len(got) != 1 || got[0].WelcomeID != res.WelcomeID {
		t.Fatalf("a listing of alice's that finds a Welcome = %+v, want %s", got, res.WelcomeID)
	}
	must(s.as(alice).Ack(context.Background(), "dev3", res.WelcomeID))(t)

	cancel()
	for _, ch := range []<-chan listing{first, second, bobs} {
		if l := receive(t, ch); l.err == nil {
			t.Fatal("a cancelled listing returned no error")
		}
	}
	// The server notices the clients going away and frees alice's slots.
	awaitSlot(t, s, "dev3", "the slots of alice's listings whose clients went away were not freed")
}

// By default a DID may have DefaultMaxWaitersPerDID listings waiting, one
// per device of a DID with SPEC's default number of devices.
func TestLongPollMaxWaitersPerDIDDefault(t *testing.T) {
	s, spy := longPollServer(t, nil)
	addDevice(t, s, "dev1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := make([]<-chan listing, httpapi.DefaultMaxWaitersPerDID)
	for i := range waiting {
		waiting[i] = listAsync(ctx, s, "dev1", client.ListOptions{Wait: 60 * time.Second})
		spy.awaitRegistration(t, "dev1")
	}
	resp := s.do(http.MethodGet, "/v1/devices/dev1/welcomes?wait=10s", alice, "", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("waiter %d of alice's: status %d, Retry-After %q; want 503 with Retry-After",
			len(waiting)+1, resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	cancel()
	for _, ch := range waiting {
		receive(t, ch)
	}
}
