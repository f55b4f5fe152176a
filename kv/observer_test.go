package kv

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

// recorder is an Observer that counts every call.
type recorder struct {
	mu       sync.Mutex
	calls    map[string]int // "Method arg…" → calls, or summed n for Published
	commits  []int          // ops of each CommitBatch
	maxDur   time.Duration
	negative bool
	hook     func() // run once, outside the lock, by the next CommitBatch
}

func newRecorder() *recorder { return &recorder{calls: map[string]int{}} }

func (r *recorder) add(key string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[key] += n
}

// onCommit makes the next CommitBatch call run hook.
func (r *recorder) onCommit(hook func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hook = hook
}

func (r *recorder) CommitBatch(ops int, d time.Duration) {
	r.mu.Lock()
	r.commits = append(r.commits, ops)
	r.maxDur = max(r.maxDur, d)
	r.negative = r.negative || d < 0
	hook := r.hook
	r.hook = nil
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
}

func (r *recorder) Claimed(suite uint16, lastResort bool) {
	r.add(fmt.Sprintf("Claimed %d %v", suite, lastResort), 1)
}
func (r *recorder) Consumed(suite uint16)         { r.add(fmt.Sprintf("Consumed %d", suite), 1) }
func (r *recorder) Published(suite uint16, n int) { r.add(fmt.Sprintf("Published %d", suite), n) }
func (r *recorder) ClaimMiss(reason kpd.Code)     { r.add("ClaimMiss "+string(reason), 1) }
func (r *recorder) WelcomePosted()                { r.add("WelcomePosted", 1) }
func (r *recorder) DeliveryFinished(outcome kpd.DeliveryState) {
	r.add("DeliveryFinished "+string(outcome), 1)
}
func (r *recorder) WelcomeRejected(reason kpd.Code) { r.add("WelcomeRejected "+string(reason), 1) }

// snapshot returns the counted calls (without CommitBatch) and resets them.
func (r *recorder) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = map[string]int{}
	return c
}

// ops returns the ops of every commit so far and resets them.
func (r *recorder) ops() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.commits
	r.commits = nil
	return c
}

func (r *recorder) want(t *testing.T, step string, want map[string]int) {
	t.Helper()
	if got := r.snapshot(); !maps.Equal(got, want) {
		t.Errorf("%s: observed %v\nwant %v", step, got, want)
	}
}

// TestObserverScenario scripts every kind of change and checks what the
// Observer hears, after each step.
func TestObserverScenario(t *testing.T) {
	obs := newRecorder()
	e := newTestDB(t, func(o *Options) { o.Observer = obs; o.WelcomeRetention = time.Hour })

	refs := e.publishN(t, bob, "phone", 1, 3)
	e.publish(t, bob, "phone", e.newLastResort(1), e.newKP(2), e.newKP(2))
	e.publish(t, bob, "phone", e.newKP(2))
	obs.want(t, "publish", map[string]int{"Published 1": 4, "Published 2": 3})
	if _, _, err := e.Publish(e.ctx, bob, "tablet", []kpd.KeyPackage{{Ref: refs[0], CipherSuite: 1, Data: []byte{1}}}); err == nil {
		t.Fatal("conflicting publish succeeded")
	}
	e.publish(t, bob, "phone", kpd.KeyPackage{Ref: refs[1], CipherSuite: 1, Data: []byte{1}}) // duplicate
	obs.want(t, "conflict and duplicate", map[string]int{})

	res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 2, Targets: []kpd.ClaimTarget{
		{DID: bob, Devices: []string{"phone", "tablet"}}, {DID: carol}}})
	if len(res.KeyPackages) != 1 || len(res.Missing) != 2 {
		t.Fatalf("claim = %+v", res)
	}
	obs.want(t, "claim", map[string]int{"Claimed 2 false": 1, "ClaimMiss NoKeyPackages": 2})
	_, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: alice, CipherSuite: 1, AllOrNothing: true,
		Targets: []kpd.ClaimTarget{{DID: bob}, {DID: carol}}})
	wantCode(t, err, kpd.CodeConflict)
	obs.want(t, "failed all_or_nothing claim", map[string]int{"ClaimMiss NoKeyPackages": 1})

	for range 2 {
		e.claimOne(t, alice, bob, "phone", 2)
	}
	obs.snapshot()
	e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: 2, Targets: []kpd.ClaimTarget{{DID: bob, Devices: []string{"phone"}}}})
	obs.want(t, "claim from an exhausted device", map[string]int{"ClaimMiss Exhausted": 1})

	acked := e.claimOne(t, alice, bob, "phone", 1).Ref
	rejected := e.claimOne(t, alice, bob, "phone", 1).Ref
	taken := e.claimOne(t, alice, bob, "phone", 1).Ref
	lr := e.claimOne(t, alice, bob, "phone", 1)
	obs.want(t, "claims", map[string]int{"Claimed 1 false": 3, "Claimed 1 true": 1})

	first := e.welcome(alice, "c", 1, acked, lr.Ref)
	w1, err := e.PostWelcome(e.ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	w2 := e.post(t, alice, "c", 1, rejected)
	e.post(t, alice, "c", 1, taken)
	e.post(t, alice, "c", 1, randRef()) // routes nowhere
	if again, err := e.PostWelcome(e.ctx, first); err != nil || again.Created {
		t.Fatalf("re-post = %+v, %v", again, err)
	}
	obs.want(t, "posts", map[string]int{"WelcomePosted": 3})

	if _, err := e.Ack(e.ctx, bob, "phone", w1.WelcomeID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Ack(e.ctx, bob, "phone", w1.WelcomeID); err != nil { // idempotent
		t.Fatal(err)
	}
	obs.want(t, "ack", map[string]int{"Consumed 1": 1, "DeliveryFinished acked": 1})
	if _, err := e.Reject(e.ctx, bob, "phone", w2.WelcomeID, kpd.ReasonNoMatchingKeyPackage, ""); err != nil {
		t.Fatal(err)
	}
	obs.want(t, "reject", map[string]int{"Consumed 1": 1, "DeliveryFinished rejected": 1, "WelcomeRejected NoMatchingKeyPackage": 1})
	if _, _, err := e.Take(e.ctx, bob, "phone", ""); err != nil {
		t.Fatal(err)
	}
	obs.want(t, "take", map[string]int{"Consumed 1": 1, "DeliveryFinished acked": 1})

	// The sweeper expires one delivery; deleting a device ends the other.
	lr2 := e.newLastResort(1)
	e.publish(t, bob, "tablet", lr2)
	e.claimOne(t, alice, bob, "tablet", 1)
	e.post(t, alice, "c", 1, lr2.Ref)
	e.publishN(t, bob, "watch", 1, 1)
	e.post(t, alice, "c", 1, e.claimOne(t, alice, bob, "watch", 1).Ref)
	obs.snapshot()
	e.clock.Advance(time.Hour)
	e.sweep(t)
	if err := e.DeleteDevice(e.ctx, bob, "watch"); err != nil {
		t.Fatal(err)
	}
	obs.want(t, "expiry", map[string]int{"DeliveryFinished expired": 2})
	e.publishN(t, bob, "watch", 1, 1)
	e.post(t, alice, "c", 1, e.claimOne(t, alice, bob, "watch", 1).Ref)
	obs.snapshot()
	if err := e.DeleteDevice(e.ctx, bob, "watch"); err != nil {
		t.Fatal(err)
	}
	obs.want(t, "device deletion", map[string]int{"DeliveryFinished expired": 1})
}

// TestObserverAfterCommitOnly: a write that fails after noting something
// reports nothing, and each operation of a batch that bbolt re-runs is
// reported once.
func TestObserverAfterCommitOnly(t *testing.T) {
	obs := newRecorder()
	e := newTestDB(t, func(o *Options) { o.Observer = obs; o.MaxBatchDelay = 20 * time.Millisecond })
	obs.ops()
	boom := errors.New("boom")
	const writers = 8
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := e.write(e.ctx, func(t *txn) error {
				t.note(func(o Observer) { o.WelcomePosted() })
				if i == 3 {
					return boom
				}
				return t.bucket(bucketMeta).Put([]byte(fmt.Sprint("test-", i)), nil)
			})
			if (i == 3) != errors.Is(err, boom) {
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	obs.want(t, "batch with a failing write", map[string]int{"WelcomePosted": writers - 1})
	// The failing writer ran alone and rolled back: no commit reports it.
	ops := 0
	for _, n := range obs.ops() {
		ops += n
	}
	if ops != writers-1 {
		t.Errorf("commits carried %d operations, want %d", ops, writers-1)
	}
}

// TestObserverCommitBatch: concurrent writers share commits, and each
// commit is reported once with its operations.
func TestObserverCommitBatch(t *testing.T) {
	obs := newRecorder()
	e := newTestDB(t, func(o *Options) { o.Observer = obs; o.MaxBatchDelay = 10 * time.Millisecond })
	e.publishN(t, bob, "phone", 1, 100)
	obs.ops()
	before := e.WriteStats()
	const writers = 32
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				e.claimOne(t, alice, bob, "phone", 1)
			} else {
				e.publishN(t, carol, fmt.Sprint("d", i%20), 1, 1)
			}
		}()
	}
	wg.Wait()
	ops := obs.ops()
	total, most := 0, 0
	for _, n := range ops {
		total, most = total+n, max(most, n)
	}
	if total != writers || most < 2 {
		t.Fatalf("commits carried %v operations: want %d in all, some shared", ops, writers)
	}
	// WriteStats counts the same commits and operations.
	if ws := e.WriteStats(); ws.Operations-before.Operations != writers || ws.Commits-before.Commits != int64(len(ops)) ||
		ws.PagesWritten-before.PagesWritten < 2*int64(len(ops)) {
		t.Fatalf("write stats %+v before, %+v after %d commits", before, ws, len(ops))
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.negative || obs.maxDur <= 0 || obs.maxDur > 10*time.Second {
		t.Fatalf("commit durations up to %s (negative: %v)", obs.maxDur, obs.negative)
	}
}
