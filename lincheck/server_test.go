package lincheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// t0 is the (injected) time at which the recorded histories start; the
// KeyPackages made for them are valid around it.
var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

const (
	// historyOps is roughly how many operations the history of
	// TestClaimsAreLinearizable holds; the other tests record shorter ones.
	historyOps = 360
	publishers = 2
	claimers   = 6
	// ownerID is the client that lists, takes and acknowledges the
	// devices' Welcomes and reads their inventories for their owners.
	ownerID = publishers + claimers
	// kpsPerDevice is how many regular KeyPackages each device can publish.
	kpsPerDevice = 40
	// reqTimeout bounds each request: one not answered by then has an
	// unknown outcome.
	reqTimeout = 5 * time.Second
	// runTimeout bounds the recording of a history (it takes well under
	// a second): a server that stops answering fails the test then
	// instead of at go test's timeout.
	runTimeout = 30 * time.Second
	// convo is the convo_id of every posted Welcome.
	convo = "lincheck"
)

// codeUnexpected is the error of an answer the harness cannot read as one
// the model knows (say, a claim that handed out two KeyPackages for one
// device). The model never predicts it.
const codeUnexpected kpd.Code = "UnexpectedAnswer"

// madeKP is a KeyPackage made for a target device.
type madeKP struct {
	data []byte
	ref  []byte
}

// target is one device under test. Publishers take its fresh KeyPackages
// in order.
type target struct {
	key         string
	did, device string
	owner       *client.Client
	lastResort  *madeKP
	mu          sync.Mutex
	fresh       []madeKP
	sent        []madeKP
}

// take returns up to n fresh KeyPackages and, half of the time, one already
// sent (a retry that must come back as a duplicate).
func (tg *target) take(rng *rand.Rand, n int) []madeKP {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	n = min(n, len(tg.fresh))
	batch := append([]madeKP(nil), tg.fresh[:n]...)
	tg.fresh = tg.fresh[n:]
	if len(tg.sent) > 0 && rng.IntN(2) == 0 {
		batch = append(batch, tg.sent[rng.IntN(len(tg.sent))])
	}
	tg.sent = append(tg.sent, batch[:n]...)
	return batch
}

// actor is a client with the DID it authenticates as.
type actor struct {
	did string
	c   *client.Client
}

// welcome is a Welcome made for one ref, with its welcome_id.
type welcome struct {
	data []byte
	id   string
}

// harness drives a real in-process server and records its history.
type harness struct {
	t *testing.T
	// ctx ends runTimeout after the harness started.
	ctx     context.Context
	suite   mls.Suite
	url     string
	rec     *Recorder
	targets []*target
	// reqTimeout bounds each request (see the constant).
	reqTimeout time.Duration
	// hc sends every client's requests.
	hc *http.Client

	mu sync.Mutex
	// unknown describes the operations of unknown outcome; failed5xx
	// those answered 5xx.
	unknown, failed5xx []string
}

// server configures the server of a harness.
type server struct {
	// wrap, if set, wraps the real store, e.g. into a broken one.
	wrap func(kpd.Store) kpd.Store
	// noSync commits without fsync: quicker on a busy disk, but with
	// fewer concurrent writes batched into one commit.
	// TestClaimsAreLinearizable keeps fsync, as kpd serve does; the tests
	// of the checker do without.
	noSync bool
}

// startServer serves kpd on 127.0.0.1 as bench.StartServer does (dev
// authentication, kpd serve's HTTP settings), configured by cfg, and
// returns its URL. At cleanup it stops the server and checks the store's
// invariants.
func startServer(t *testing.T, clock kpd.Clock, cfg server) string {
	t.Helper()
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &kv.Options{Clock: clock, NoSync: cfg.noSync})
	if err != nil {
		t.Fatal(err)
	}
	var store kpd.Store = db
	if cfg.wrap != nil {
		store = cfg.wrap(db)
	}
	handler := httpapi.New(httpapi.Config{
		Store:    store,
		Auth:     auth.NewDevAuth(),
		Registry: mls.NewRegistry(),
		Policy:   httpapi.Policy{MaxLifetime: mls.DefaultMaxLifetime, ClockSkew: mls.DefaultClockSkew},
		Clock:    clock,
		Logger:   zerolog.Nop(),
		Ready:    db.Ready,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(errors.Join(err, db.Close()))
	}
	srv := httpapi.NewServer(handler)
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed once shut down
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		violations, verr := db.Verify(context.Background())
		if verr != nil || len(violations) > 0 {
			t.Errorf("store invariants after the run: %v %v", violations, verr)
		}
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	return "http://" + ln.Addr().String()
}

// newHarness starts a server configured by cfg and makes the devices'
// KeyPackages.
func newHarness(t *testing.T, cfg server) *harness {
	t.Helper()
	start := time.Now()
	clock := func() time.Time { return t0.Add(time.Since(start)) }
	url := startServer(t, clock, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	t.Cleanup(cancel)
	// The harness's own connections, closed before the server shuts down
	// (cleanups run last first): the server's Shutdown waits 5 s for a
	// connection that was opened but never used.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = publishers + claimers + 1
	t.Cleanup(tr.CloseIdleConnections)
	suite, _ := mls.NewRegistry().Lookup(1)
	h := &harness{t: t, ctx: ctx, suite: suite, url: url, rec: NewRecorder(), reqTimeout: reqTimeout,
		hc: &http.Client{Transport: tr}}
	// Two devices of one DID (one with a last resort) and one device of
	// another DID with a last resort.
	for i, spec := range []struct {
		did, device string
		lastResort  bool
	}{
		{"did:plc:lincheckalice", "a", true},
		{"did:plc:lincheckalice", "b", false},
		{"did:plc:lincheckbob", "c", true},
	} {
		tg := &target{
			key:    fmt.Sprintf("%d:%s/%s", i, spec.did, spec.device),
			did:    spec.did,
			device: spec.device,
			owner:  h.actor(spec.did).c,
		}
		for range kpsPerDevice {
			tg.fresh = append(tg.fresh, h.makeKP(spec.did, false))
		}
		if spec.lastResort {
			lr := h.makeKP(spec.did, true)
			tg.lastResort = &lr
		}
		h.targets = append(h.targets, tg)
	}
	return h
}

func (h *harness) makeKP(did string, lastResort bool) madeKP {
	h.t.Helper()
	bare, ref, err := mlstest.KeyPackage(h.suite, mlstest.Options{
		Identity:   did,
		NotBefore:  t0.Add(-time.Hour),
		NotAfter:   t0.Add(30 * 24 * time.Hour),
		LastResort: lastResort,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return madeKP{data: bare, ref: ref}
}

func (h *harness) actor(did string) actor {
	return actor{did: did, c: client.New(h.url, did, client.WithHTTPClient(h.hc))}
}

// makeWelcome makes a new Welcome (random bytes apart from ref) for ref.
func (h *harness) makeWelcome(ref kpd.Ref) welcome {
	raw, err := ref.Bytes()
	if err != nil {
		h.t.Fatal(err)
	}
	data, err := mlstest.Welcome(h.suite, raw)
	if err != nil {
		h.t.Fatal(err)
	}
	// data is an MLSMessage: its id is that of the bare Welcome after the
	// 4-byte header.
	return welcome{data: data, id: kpd.WelcomeID(data[4:])}
}

// do records one operation of client: run's answer, or the one its error
// gives. run's context ends after h.reqTimeout.
//
// A problem document below 500 is a definite answer, its code the Output's
// Err (a post's 422 with one rejected ref is the rejection). Anything else
// (no answer, a timeout, a 5xx, an answer that cannot be read) leaves the
// outcome unknown.
func (h *harness) do(clientID int, in Input, run func(ctx context.Context) (Output, error)) Output {
	return h.rec.Do(clientID, in, func() Output {
		ctx, cancel := context.WithTimeout(h.ctx, h.reqTimeout)
		defer cancel()
		out, err := run(ctx)
		if err == nil {
			return out
		}
		var ce *client.Error
		if errors.As(err, &ce) && ce.Status < 500 {
			switch {
			case in.Kind == KindPostWelcome && ce.Status == 422 && len(ce.Rejected) == 1:
				return Output{Rejected: ce.Rejected[0].Reason}
			case ce.Code == "":
				return Output{Err: kpd.Code(fmt.Sprintf("HTTP%d", ce.Status))}
			}
			return Output{Err: ce.Code}
		}
		out = Output{Unknown: true}
		what := fmt.Sprintf("%s: %v", describe(in, out), err)
		h.mu.Lock()
		defer h.mu.Unlock()
		if ce != nil {
			out.Err = ce.Code
			h.failed5xx = append(h.failed5xx, what)
		}
		h.unknown = append(h.unknown, what)
		return out
	})
}

// counts reads the counts of the history's suite from an inventory.
func (h *harness) counts(inv *kpd.Inventory) Counts {
	var c Counts
	if inv == nil {
		return c
	}
	for _, s := range inv.Suites {
		if s.CipherSuite == uint16(h.suite.ID) {
			c.Available, c.Claimed = s.Available, s.Claimed
			if s.LastResort != nil {
				c.LastResort = s.LastResort.Ref
			}
		}
	}
	return c
}

// publish records one publish of kps (with their last-resort flags) to tg.
func (h *harness) publish(clientID int, tg *target, kps []madeKP, lastResort bool) Output {
	in := Input{Kind: KindPublish, Device: tg.key}
	data := make([][]byte, len(kps))
	for i, kp := range kps {
		in.KeyPackages = append(in.KeyPackages, KeyPackage{Ref: kpd.RefOf(kp.ref), LastResort: lastResort})
		data[i] = kp.data
	}
	return h.do(clientID, in, func(ctx context.Context) (Output, error) {
		res, err := tg.owner.Publish(ctx, tg.device, data)
		if err != nil {
			return Output{}, err
		}
		out := Output{Counts: h.counts(res.Inventory)}
		for _, r := range res.Results {
			out.Statuses = append(out.Statuses, r.Status)
		}
		return out, nil
	})
}

// claim records one claim of a KeyPackage of tg by claimer.
func (h *harness) claim(clientID int, claimer actor, tg *target) Output {
	in := Input{Kind: KindClaim, Device: tg.key, Caller: claimer.did}
	return h.do(clientID, in, func(ctx context.Context) (Output, error) {
		res, err := claimer.c.Claim(ctx, client.ClaimRequest{
			CipherSuite: uint16(h.suite.ID),
			Targets:     []kpd.ClaimTarget{{DID: tg.did, Devices: []string{tg.device}}},
		})
		switch {
		case err != nil:
			return Output{}, err
		case len(res.KeyPackages) == 1 && len(res.Missing) == 0:
			kp := res.KeyPackages[0]
			return Output{Ref: kp.Ref, LastResort: kp.LastResort}, nil
		case len(res.KeyPackages) == 0 && len(res.Missing) == 1:
			return Output{Missing: res.Missing[0].Reason}, nil
		}
		return Output{Err: codeUnexpected}, nil
	})
}

// post records the post, by sender, of Welcome w made for ref.
func (h *harness) post(clientID int, sender actor, tg *target, ref kpd.Ref, w welcome) Output {
	in := Input{Kind: KindPostWelcome, Device: tg.key, Caller: sender.did, Ref: ref, WelcomeID: w.id}
	return h.do(clientID, in, func(ctx context.Context) (Output, error) {
		res, err := sender.c.PostWelcome(ctx, convo, w.data)
		switch {
		case err != nil:
			return Output{}, err
		case res.WelcomeID != w.id || len(res.Recipients) != 1 || res.Recipients[0].Ref != ref || len(res.Rejected) != 0:
			return Output{Err: codeUnexpected}, nil
		}
		return Output{Created: res.Created, Status: res.Recipients[0].Status}, nil
	})
}

// ack records tg's acknowledgement of Welcome id.
func (h *harness) ack(clientID int, tg *target, id string) Output {
	return h.do(clientID, Input{Kind: KindAck, Device: tg.key, WelcomeID: id}, func(ctx context.Context) (Output, error) {
		res, err := tg.owner.Ack(ctx, tg.device, id)
		if err != nil {
			return Output{}, err
		}
		return Output{Ref: res.Ref}, nil
	})
}

// list records a listing of tg's pending Welcomes.
func (h *harness) list(clientID int, tg *target) Output {
	in := Input{Kind: KindList, Device: tg.key, Limit: DefaultListLimit}
	return h.do(clientID, in, func(ctx context.Context) (Output, error) {
		list, err := tg.owner.Welcomes(ctx, tg.device, client.ListOptions{Limit: in.Limit})
		if err != nil {
			return Output{}, err
		}
		out := Output{}
		for _, pw := range list {
			out.Pending = append(out.Pending, Pending{WelcomeID: pw.WelcomeID, Ref: pw.Ref, Sender: pw.Sender})
		}
		return out, nil
	})
}

// takeWelcome records a take of tg's oldest pending Welcome.
func (h *harness) takeWelcome(clientID int, tg *target) Output {
	return h.do(clientID, Input{Kind: KindTake, Device: tg.key}, func(ctx context.Context) (Output, error) {
		pw, err := tg.owner.Take(ctx, tg.device, "")
		if err != nil {
			return Output{}, err
		}
		return Output{WelcomeID: pw.WelcomeID, Ref: pw.Ref}, nil
	})
}

// inventory records a read of tg's inventory with its KeyPackages listed.
func (h *harness) inventory(clientID int, tg *target) Output {
	return h.do(clientID, Input{Kind: KindInventory, Device: tg.key}, func(ctx context.Context) (Output, error) {
		res, err := tg.owner.Inventory(ctx, tg.device, true)
		if err != nil {
			return Output{}, err
		}
		out := Output{Counts: h.counts(&res.Inventory)}
		for _, kp := range res.KeyPackages {
			if kp.CipherSuite == uint16(h.suite.ID) {
				out.KeyPackages = append(out.KeyPackages, Listed{Ref: kp.Ref, State: kp.State, LastResort: kp.LastResort})
			}
		}
		return out, nil
	})
}

// routed reports whether a post routed its Welcome.
func routed(out Output) bool {
	return !out.Unknown && out.Err == "" && out.Rejected == ""
}

// run records a concurrent history, until about ops operations or the end
// of h.ctx: publishers feed the devices; claimers claim, have a
// DID that did not claim post a Welcome for what they got, post their own,
// have the owners acknowledge it (sometimes twice), and post it again or a
// new one for the consumed ref; the owners list, take and acknowledge
// pending Welcomes and read their inventories.
func (h *harness) run(ops int) {
	for _, tg := range h.targets {
		if tg.lastResort != nil {
			h.publish(0, tg, []madeKP{*tg.lastResort}, true)
		}
	}
	var wg sync.WaitGroup
	running := func() bool { return h.rec.Len() < ops && h.ctx.Err() == nil }
	for p := range publishers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(p), 1))
			for running() {
				tg := h.targets[rng.IntN(len(h.targets))]
				if batch := tg.take(rng, 1+rng.IntN(3)); len(batch) > 0 {
					h.publish(p, tg, batch, false)
				}
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			}
		})
	}
	for c := range claimers {
		wg.Go(func() {
			id := publishers + c
			rng := rand.New(rand.NewPCG(uint64(id), 2))
			me := h.actor(fmt.Sprintf("did:plc:lincheckclaimer%d", c))
			intruder := h.actor(fmt.Sprintf("did:plc:lincheckclaimer%d", (c+1)%claimers))
			for running() {
				tg := h.targets[rng.IntN(len(h.targets))]
				got := h.claim(id, me, tg)
				if got.Ref != "" && rng.IntN(4) == 0 {
					// From a DID that did not claim it: NotClaimedByCaller,
					// or routed if it is the last resort.
					h.post(id, intruder, tg, got.Ref, h.makeWelcome(got.Ref))
				}
				if got.Ref != "" && rng.IntN(3) > 0 {
					w := h.makeWelcome(got.Ref)
					if routed(h.post(id, me, tg, got.Ref, w)) {
						for range 1 + rng.IntN(2) {
							h.ack(id, tg, w.id)
						}
						switch rng.IntN(3) {
						case 0:
							// The same bytes again: 200, the stored result (acked).
							h.post(id, me, tg, got.Ref, w)
						case 1:
							// A new Welcome for the consumed ref: AlreadyConsumed,
							// or routed if it is the last resort.
							h.post(id, me, tg, got.Ref, h.makeWelcome(got.Ref))
						}
					}
				}
			}
		})
	}
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(ownerID, 3))
		for running() {
			tg := h.targets[rng.IntN(len(h.targets))]
			switch rng.IntN(4) {
			case 0:
				h.inventory(ownerID, tg)
			case 1:
				h.takeWelcome(ownerID, tg)
			default:
				if out := h.list(ownerID, tg); len(out.Pending) > 0 && rng.IntN(2) == 0 {
					h.ack(ownerID, tg, out.Pending[0].WelcomeID)
				}
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	})
	wg.Wait()
}

// history returns the recorded history. It fails the test if the run did
// not complete in time, and reports answers of 5xx; other operations of
// unknown outcome are logged and left to the checker.
func (h *harness) history() []porcupine.Operation {
	h.t.Helper()
	history := h.rec.History()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx.Err() != nil {
		h.t.Fatalf("the run did not complete within %s: %d operations recorded, %d of unknown outcome, e.g. %v",
			runTimeout, len(history), len(h.unknown), first(h.unknown))
	}
	if len(h.failed5xx) > 0 {
		h.t.Errorf("%d operations answered 5xx, e.g. %s", len(h.failed5xx), h.failed5xx[0])
	}
	if len(h.unknown) > 0 {
		h.t.Logf("%d operations of unknown outcome, e.g. %s", len(h.unknown), h.unknown[0])
	}
	return history
}

func first(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return s[0]
}

// overlappingClaims counts the pairs of claims of the same device whose
// call-return intervals overlap.
func overlappingClaims(history []porcupine.Operation) int {
	n := 0
	for i, a := range history {
		for _, b := range history[i+1:] {
			ia, ib := a.Input.(Input), b.Input.(Input)
			if ia.Kind == KindClaim && ib.Kind == KindClaim && ia.Device == ib.Device &&
				a.Call <= b.Return && b.Call <= a.Return {
				n++
			}
		}
	}
	return n
}

// checkLinearizable fails the test unless history is linearizable; on
// failure it writes porcupine's visualization next to the test's files.
func checkLinearizable(t *testing.T, history []porcupine.Operation) {
	t.Helper()
	res, info := Check(history, 30*time.Second)
	if res == porcupine.Ok {
		return
	}
	path := filepath.Join(os.TempDir(), fmt.Sprintf("kpd-lincheck-%d.html", time.Now().UnixNano()))
	if err := porcupine.VisualizePath(Model(), info, path); err != nil {
		t.Logf("visualization: %v", err)
	}
	t.Fatalf("history of %d operations judged %v; visualization in %s", len(history), res, path)
}

func TestClaimsAreLinearizable(t *testing.T) {
	t.Parallel()
	h := newHarness(t, server{})
	h.run(historyOps)
	history := h.history()
	counts := map[Kind]int{}
	seen := map[string]int{}
	regular := 0
	for _, op := range history {
		in, out := op.Input.(Input), op.Output.(Output)
		counts[in.Kind]++
		switch {
		case in.Kind == KindClaim && out.Ref != "" && !out.LastResort:
			regular++
		case in.Kind == KindPostWelcome && out.Rejected != "":
			seen["post rejected "+string(out.Rejected)]++
		case in.Kind == KindPostWelcome && routed(out) && !out.Created:
			seen["repeated post"]++
		case in.Kind == KindList && len(out.Pending) > 0:
			seen["listing of pending Welcomes"]++
		case in.Kind == KindTake && !out.Unknown && out.Err == "":
			seen["take of a Welcome"]++
		}
	}
	overlapping := overlappingClaims(history)
	t.Logf("recorded %d operations: %v (%d regular KeyPackages claimed, %d pairs of claims of one device overlapping in time; %v)",
		len(history), counts, regular, overlapping, seen)
	checkLinearizable(t, history)
	// A history that passes must also have tested what it is for.
	if overlapping == 0 {
		t.Fatal("no two claims of one device overlapped: the history tests no concurrency")
	}
	for _, k := range []Kind{KindPublish, KindClaim, KindPostWelcome, KindAck, KindList, KindTake, KindInventory} {
		if counts[k] == 0 {
			t.Fatalf("no %s operation recorded", k)
		}
	}
	for _, s := range []string{"post rejected " + string(kpd.CodeNotClaimedByCaller), "post rejected " + string(kpd.CodeAlreadyConsumed),
		"repeated post", "listing of pending Welcomes", "take of a Welcome"} {
		if seen[s] == 0 {
			t.Fatalf("the history has no %s: it does not test it", s)
		}
	}
}

// A recorded history that is tampered with in the two ways a broken pool
// would show (one ref handed out twice; refs handed out out of order) must
// be rejected. The tail of the history is made sequential on purpose so
// that the tampering is certainly illegal.
func TestCheckerCatchesBrokenRecordedHistory(t *testing.T) {
	t.Parallel()
	h := newHarness(t, server{noSync: true})
	h.run(historyOps / 3)
	// Drain device b (no last resort), publish two KeyPackages in one
	// batch and claim them one after the other.
	tg := h.targets[1]
	claimer := h.actor("did:plc:lincheckclaimer0")
	for range 2 * kpsPerDevice {
		if out := h.claim(0, claimer, tg); out.Missing != "" {
			break
		}
	}
	pair := []madeKP{h.makeKP(tg.did, false), h.makeKP(tg.did, false)}
	h.publish(0, tg, pair, false)
	first := h.claim(0, claimer, tg)
	second := h.claim(0, claimer, tg)
	if first.Ref != kpd.RefOf(pair[0].ref) || second.Ref != kpd.RefOf(pair[1].ref) {
		t.Fatalf("sequential claims after a publish got %s, %s; want the batch in order", first.Ref, second.Ref)
	}
	history := h.history()
	checkLinearizable(t, history)

	n := len(history)
	tamper := func(f func(a, b *Output)) []porcupine.Operation {
		c := append([]porcupine.Operation(nil), history...)
		a, b := c[n-2].Output.(Output), c[n-1].Output.(Output)
		f(&a, &b)
		c[n-2].Output, c[n-1].Output = a, b
		return c
	}
	cases := map[string][]porcupine.Operation{
		"same ref claimed twice": tamper(func(a, b *Output) { b.Ref = a.Ref }),
		"FIFO order violated":    tamper(func(a, b *Output) { a.Ref, b.Ref = b.Ref, a.Ref }),
	}
	for name, broken := range cases {
		if res, _ := Check(broken, 30*time.Second); res != porcupine.Illegal {
			t.Errorf("%s: judged %v, want Illegal", name, res)
		}
	}
}

// replayingStore is a broken store: every fourth claim of a target that
// has had a regular KeyPackage handed out answers what the last such claim
// got (a KeyPackage already claimed) instead of claiming. The claimers run
// concurrently, so the replayed claims overlap others.
type replayingStore struct {
	kpd.Store
	mu      sync.Mutex
	claims  int
	last    map[string]kpd.ClaimResult
	replays atomic.Int32
}

func (s *replayingStore) Claim(ctx context.Context, req kpd.ClaimRequest) (*kpd.ClaimResult, error) {
	key := fmt.Sprint(req.Targets)
	s.mu.Lock()
	prev, ok := s.last[key]
	if ok {
		s.claims++
	}
	replay := ok && s.claims%4 == 0
	s.mu.Unlock()
	if replay {
		s.replays.Add(1)
		return &prev, nil
	}
	res, err := s.Store.Claim(ctx, req)
	if err == nil && len(res.KeyPackages) == 1 && !res.KeyPackages[0].LastResort {
		s.mu.Lock()
		s.last[key] = *res
		s.mu.Unlock()
	}
	return res, err
}

// lostAckStore is a broken store: every third ack, if its Welcome is
// pending, answers as if it had acknowledged it but writes nothing.
type lostAckStore struct {
	kpd.Store
	acks, lost atomic.Int32
}

func (s *lostAckStore) Ack(ctx context.Context, did, device, welcomeID string) (*kpd.AckResult, error) {
	if s.acks.Add(1)%3 == 0 {
		pending, err := s.Store.PendingWelcomes(ctx, did, device, kpd.ListWelcomesOptions{})
		if err != nil {
			return nil, err
		}
		for _, pw := range pending {
			if pw.WelcomeID == welcomeID {
				s.lost.Add(1)
				return &kpd.AckResult{Ref: pw.Ref, ConsumedAt: time.Now()}, nil
			}
		}
	}
	return s.Store.Ack(ctx, did, device, welcomeID)
}

// brokenStore wraps the real store into one that misbehaves.
type brokenStore struct {
	wrap func(kpd.Store) kpd.Store
	// faults returns how often the store misbehaved.
	faults func() int32
}

// The recording harness run against a deliberately broken store records a
// history that the checker rejects.
func TestCheckerCatchesBrokenStore(t *testing.T) {
	cases := map[string]func() brokenStore{
		"claim hands out a claimed KeyPackage again": func() brokenStore {
			s := &replayingStore{last: map[string]kpd.ClaimResult{}}
			return brokenStore{wrap: func(db kpd.Store) kpd.Store { s.Store = db; return s }, faults: s.replays.Load}
		},
		"ack answers but writes nothing": func() brokenStore {
			s := &lostAckStore{}
			return brokenStore{wrap: func(db kpd.Store) kpd.Store { s.Store = db; return s }, faults: s.lost.Load}
		},
	}
	for name, broken := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := broken()
			h := newHarness(t, server{wrap: b.wrap, noSync: true})
			h.run(historyOps / 2)
			history := h.history()
			if b.faults() == 0 {
				t.Fatal("the broken store never misbehaved")
			}
			res, _ := Check(history, 30*time.Second)
			t.Logf("%d operations, %d faults: %v", len(history), b.faults(), res)
			if res != porcupine.Illegal {
				t.Fatalf("history of a broken store judged %v, want Illegal", res)
			}
		})
	}
}

// stallingStore claims, but holds every fifth claim's answer until its
// request ends, so that the client times out on a claim that took effect.
type stallingStore struct {
	kpd.Store
	claims, stalled atomic.Int32
}

func (s *stallingStore) Claim(ctx context.Context, req kpd.ClaimRequest) (*kpd.ClaimResult, error) {
	res, err := s.Store.Claim(ctx, req)
	if err != nil || s.claims.Add(1)%5 != 0 {
		return res, err
	}
	s.stalled.Add(1)
	select {
	case <-ctx.Done():
	case <-time.After(runTimeout):
	}
	return nil, errors.New("stalled")
}

// Operations whose answer never comes have unknown outcomes, which the
// checker accepts with or without their effect: a history in which later
// claims skip the KeyPackages that unanswered claims took is linearizable.
func TestUnknownOutcomesAreChecked(t *testing.T) {
	t.Parallel()
	s := &stallingStore{}
	h := newHarness(t, server{wrap: func(db kpd.Store) kpd.Store { s.Store = db; return s }, noSync: true})
	h.reqTimeout = 200 * time.Millisecond
	h.run(historyOps / 3)
	history := h.history()
	unknown := 0
	for _, op := range history {
		if op.Output.(Output).Unknown {
			unknown++
		}
	}
	if unknown == 0 || s.stalled.Load() == 0 {
		t.Fatalf("%d claims stalled, %d operations of unknown outcome: want some", s.stalled.Load(), unknown)
	}
	checkLinearizable(t, history)
}
