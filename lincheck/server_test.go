package lincheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/bench"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// t0 is the (injected) time at which the recorded histories start; the
// KeyPackages made for them are valid around it.
var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

const (
	// historyOps is roughly how many operations a recorded history holds.
	historyOps = 320
	publishers = 2
	claimers   = 6
	// kpsPerDevice is how many regular KeyPackages each device can publish.
	kpsPerDevice = 40
)

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

// harness drives a real in-process server and records its history.
type harness struct {
	t       *testing.T
	ctx     context.Context
	suite   mls.Suite
	url     string
	rec     *Recorder
	targets []*target
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	start := time.Now()
	clock := func() time.Time { return t0.Add(time.Since(start)) }
	srv, err := bench.StartServer(bench.ServerConfig{Path: filepath.Join(t.TempDir(), "kpd.db"), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		violations, verr := srv.DB.Verify(context.Background())
		if verr != nil || len(violations) > 0 {
			t.Errorf("store invariants after the run: %v %v", violations, verr)
		}
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	suite, _ := mls.NewRegistry().Lookup(1)
	h := &harness{t: t, ctx: context.Background(), suite: suite, url: srv.URL, rec: NewRecorder()}
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
			owner:  client.New(srv.URL, spec.did),
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

// errOutput turns a failed call into an Output carrying its code; a
// transport failure is Internal, which the model never accepts.
func errOutput(err error) Output {
	var ce *client.Error
	if errors.As(err, &ce) && ce.Code != "" {
		return Output{Err: ce.Code}
	}
	return Output{Err: kpd.CodeInternal}
}

// publish records one publish of kps (with their last-resort flags) to tg.
func (h *harness) publish(clientID int, tg *target, kps []madeKP, lastResort bool) Output {
	in := Input{Kind: KindPublish, Device: tg.key}
	data := make([][]byte, len(kps))
	for i, kp := range kps {
		in.KeyPackages = append(in.KeyPackages, KeyPackage{Ref: kpd.RefOf(kp.ref), LastResort: lastResort})
		data[i] = kp.data
	}
	return h.rec.Do(clientID, in, func() Output {
		res, err := tg.owner.Publish(h.ctx, tg.device, data)
		if err != nil {
			return errOutput(err)
		}
		out := Output{}
		for _, r := range res.Results {
			out.Statuses = append(out.Statuses, r.Status)
		}
		for _, s := range res.Inventory.Suites {
			if s.CipherSuite == uint16(h.suite.ID) {
				out.Available = s.Available
			}
		}
		return out
	})
}

// claim records one claim of a KeyPackage of tg by claimer.
func (h *harness) claim(clientID int, claimer *client.Client, tg *target) Output {
	return h.rec.Do(clientID, Input{Kind: KindClaim, Device: tg.key}, func() Output {
		res, err := claimer.Claim(h.ctx, client.ClaimRequest{
			CipherSuite: uint16(h.suite.ID),
			Targets:     []kpd.ClaimTarget{{DID: tg.did, Devices: []string{tg.device}}},
		})
		switch {
		case err != nil:
			return errOutput(err)
		case len(res.KeyPackages) == 1 && len(res.Missing) == 0:
			kp := res.KeyPackages[0]
			return Output{Ref: kp.Ref, LastResort: kp.LastResort}
		case len(res.KeyPackages) == 0 && len(res.Missing) == 1:
			return Output{Missing: res.Missing[0].Reason}
		}
		return Output{Err: kpd.CodeInternal}
	})
}

// postWelcome records the post, by claimer, of a Welcome naming ref.
func (h *harness) postWelcome(clientID int, claimer *client.Client, tg *target, ref kpd.Ref) (string, Output) {
	raw, err := ref.Bytes()
	if err != nil {
		h.t.Fatal(err)
	}
	welcome, err := mlstest.Welcome(h.suite, raw)
	if err != nil {
		h.t.Fatal(err)
	}
	// welcome is an MLSMessage: its id is that of the bare Welcome after
	// the 4-byte header.
	id := kpd.WelcomeID(welcome[4:])
	in := Input{Kind: KindPostWelcome, Device: tg.key, Ref: ref, WelcomeID: id}
	out := h.rec.Do(clientID, in, func() Output {
		res, err := claimer.PostWelcome(h.ctx, "lincheck", welcome)
		var ce *client.Error
		switch {
		case errors.As(err, &ce) && len(ce.Rejected) == 1:
			return Output{Rejected: ce.Rejected[0].Reason}
		case err != nil:
			return errOutput(err)
		case res.WelcomeID != id || len(res.Recipients) != 1:
			return Output{Err: kpd.CodeInternal}
		}
		return Output{}
	})
	return id, out
}

// ack records tg's acknowledgement of Welcome id (made for ref).
func (h *harness) ack(clientID int, tg *target, id string, ref kpd.Ref) Output {
	return h.rec.Do(clientID, Input{Kind: KindAck, Device: tg.key, Ref: ref, WelcomeID: id}, func() Output {
		res, err := tg.owner.Ack(h.ctx, tg.device, id)
		if err != nil {
			return errOutput(err)
		}
		return Output{Ref: res.Ref}
	})
}

// failures returns the recorded operations that failed or were refused.
func failures(history []porcupine.Operation) []string {
	var bad []string
	for _, op := range history {
		in, out := op.Input.(Input), op.Output.(Output)
		if out.Err != "" && !(in.Kind == KindAck && out.Err == kpd.CodeNotFound) {
			bad = append(bad, describe(in, out))
		}
	}
	return bad
}

// run records a concurrent history: publishers feed the devices while
// claimers claim, post Welcomes for what they got, and have the owners
// acknowledge them (sometimes twice), until about historyOps operations.
func (h *harness) run() {
	for _, tg := range h.targets {
		if tg.lastResort != nil {
			h.publish(0, tg, []madeKP{*tg.lastResort}, true)
		}
	}
	var wg sync.WaitGroup
	var stop atomic.Bool
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(p), 1))
			for !stop.Load() {
				tg := h.targets[rng.IntN(len(h.targets))]
				if batch := tg.take(rng, 1+rng.IntN(3)); len(batch) > 0 {
					h.publish(p, tg, batch, false)
				}
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			}
		}()
	}
	for c := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := publishers + c
			rng := rand.New(rand.NewPCG(uint64(id), 2))
			claimer := client.New(h.url, fmt.Sprintf("did:plc:lincheckclaimer%d", c))
			for !stop.Load() {
				tg := h.targets[rng.IntN(len(h.targets))]
				got := h.claim(id, claimer, tg)
				if got.Ref != "" && rng.IntN(3) > 0 {
					wid, out := h.postWelcome(id, claimer, tg, got.Ref)
					if out.Err == "" && out.Rejected == "" {
						for range 1 + rng.IntN(2) {
							h.ack(id, tg, wid, got.Ref)
						}
					}
				}
				if h.rec.Len() >= historyOps {
					stop.Store(true)
				}
			}
		}()
	}
	wg.Wait()
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
	h := newHarness(t)
	h.run()
	history := h.rec.History()
	if bad := failures(history); len(bad) > 0 {
		t.Fatalf("%d operations failed, e.g. %v", len(bad), bad[0])
	}
	counts := map[Kind]int{}
	contended := 0
	for _, op := range history {
		in, out := op.Input.(Input), op.Output.(Output)
		counts[in.Kind]++
		if in.Kind == KindClaim && out.Missing == "" && !out.LastResort {
			contended++
		}
	}
	overlapping := overlappingClaims(history)
	t.Logf("recorded %d operations: %v (%d regular KeyPackages claimed, %d pairs of claims of one device overlapping in time)",
		len(history), counts, contended, overlapping)
	if overlapping == 0 {
		t.Fatal("no two claims of one device overlapped: the history tests no concurrency")
	}
	for _, k := range []Kind{KindPublish, KindClaim, KindPostWelcome, KindAck} {
		if counts[k] == 0 {
			t.Fatalf("no %s operation recorded", k)
		}
	}
	checkLinearizable(t, history)
}

// A recorded history that is tampered with in the two ways a broken pool
// would show (one ref handed out twice; refs handed out out of order) must
// be rejected. The tail of the history is made sequential on purpose so
// that the tampering is certainly illegal.
func TestCheckerCatchesBrokenRecordedHistory(t *testing.T) {
	h := newHarness(t)
	h.run()
	// Drain device b (no last resort), publish two KeyPackages in one
	// batch and claim them one after the other.
	tg := h.targets[1]
	claimer := client.New(h.url, "did:plc:lincheckclaimer0")
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
	history := h.rec.History()
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
