package kv

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
)

// t0 is the tests' starting time.
var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// env is an open test database and its clock.
type env struct {
	*DB
	clock *testkit.Clock
	path  string
	ctx   context.Context
}

// newTestDB opens a database in t.TempDir() with a clock starting at t0.
// Its cleanup runs Verify, failing the test on any violation, then closes
// the database. opts adjust the Options.
func newTestDB(t testing.TB, opts ...func(*Options)) *env {
	t.Helper()
	return verified(t, openTestDB(t, opts...))
}

// verified registers a cleanup that fails the test if e's database (the
// one open then) breaks an invariant.
func verified(t testing.TB, e *env) *env {
	t.Cleanup(func() {
		vs, err := e.Verify(context.Background())
		if err != nil {
			t.Errorf("verify: %v", err)
		}
		for _, v := range vs {
			t.Errorf("verify: %s", v)
		}
	})
	return e
}

// openTestDB is newTestDB without the invariant check, for tests that
// corrupt the database on purpose.
func openTestDB(t testing.TB, opts ...func(*Options)) *env {
	t.Helper()
	return openTestFile(t, filepath.Join(t.TempDir(), "kpd.db"), opts...)
}

// openTestFile opens the database at path with a clock starting at t0.
func openTestFile(t testing.TB, path string, opts ...func(*Options)) *env {
	t.Helper()
	clock := testkit.NewClock(t0)
	o := &Options{Clock: clock.Now, NoSync: true, MaxBatchDelay: 200 * time.Microsecond}
	for _, f := range opts {
		f(o)
	}
	db, err := Open(path, o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	e := &env{DB: db, clock: clock, path: path, ctx: context.Background()}
	// Registered first, so it runs after the verify cleanup.
	t.Cleanup(func() { e.DB.Close() })
	return e
}

// randRef returns a random 32-byte ref.
func randRef() kpd.Ref {
	b := make([]byte, 32)
	rand.Read(b)
	return kpd.RefOf(b)
}

// newKP returns a synthetic KeyPackage valid for 30 days from now.
func (e *env) newKP(suite uint16) kpd.KeyPackage {
	data := make([]byte, 120)
	rand.Read(data)
	now := e.clock.Now()
	return kpd.KeyPackage{Ref: randRef(), CipherSuite: suite, Data: data,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour)}
}

func (e *env) newLastResort(suite uint16) kpd.KeyPackage {
	kp := e.newKP(suite)
	kp.LastResort = true
	return kp
}

// publish publishes kps and fails the test on error.
func (e *env) publish(t testing.TB, did, device string, kps ...kpd.KeyPackage) []kpd.PublishResult {
	t.Helper()
	res, _, err := e.Publish(e.ctx, did, device, kps)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return res
}

// publishN publishes n fresh regular KeyPackages and returns their refs.
func (e *env) publishN(t testing.TB, did, device string, suite uint16, n int) []kpd.Ref {
	t.Helper()
	kps := make([]kpd.KeyPackage, n)
	refs := make([]kpd.Ref, n)
	for i := range kps {
		kps[i] = e.newKP(suite)
		refs[i] = kps[i].Ref
	}
	e.publish(t, did, device, kps...)
	return refs
}

// claim claims for claimer and fails the test on error.
func (e *env) claim(t testing.TB, req kpd.ClaimRequest) *kpd.ClaimResult {
	t.Helper()
	res, err := e.Claim(e.ctx, req)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	return res
}

// claimOne claims one KeyPackage of the device and returns its ref.
func (e *env) claimOne(t testing.TB, claimer, did, device string, suite uint16) kpd.ClaimedKeyPackage {
	t.Helper()
	res := e.claim(t, kpd.ClaimRequest{Claimer: claimer, CipherSuite: suite,
		Targets: []kpd.ClaimTarget{{DID: did, Devices: []string{device}}}})
	if len(res.KeyPackages) != 1 {
		t.Fatalf("claim from %s %s: got %d KeyPackages, missing %v", did, device, len(res.KeyPackages), res.Missing)
	}
	return res.KeyPackages[0]
}

// inventory returns a device's inventory and listing.
func (e *env) inventory(t testing.TB, did, device string) (*kpd.Inventory, []kpd.KeyPackageInfo) {
	t.Helper()
	inv, list, err := e.Inventory(e.ctx, did, device, true)
	if err != nil {
		t.Fatalf("inventory: %v", err)
	}
	return inv, list
}

// record returns the stored record of ref (nil if none).
func (e *env) record(t testing.TB, ref kpd.Ref) *kpRecord {
	t.Helper()
	b, err := ref.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var rec *kpRecord
	if err := e.read(e.ctx, func(tx *txn) error {
		rec, err = tx.keyPackage(b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return rec
}

// suiteOf returns the inventory entry of one suite (zero if absent).
func suiteOf(inv *kpd.Inventory, suite uint16) kpd.SuiteInventory {
	for _, s := range inv.Suites {
		if s.CipherSuite == suite {
			return s
		}
	}
	return kpd.SuiteInventory{}
}

// stateOf returns the state of ref in a listing, or "" if it is not there.
func stateOf(list []kpd.KeyPackageInfo, ref kpd.Ref) kpd.KeyPackageState {
	i := slices.IndexFunc(list, func(k kpd.KeyPackageInfo) bool { return k.Ref == ref })
	if i < 0 {
		return ""
	}
	return list[i].State
}

// post posts a Welcome naming refs and fails the test on error.
func (e *env) post(t testing.TB, sender, convo string, suite uint16, refs ...kpd.Ref) *kpd.PostWelcomeResult {
	t.Helper()
	res, err := e.PostWelcome(e.ctx, e.welcome(sender, convo, suite, refs...))
	if err != nil {
		t.Fatalf("post welcome: %v", err)
	}
	return res
}

// welcome returns a synthetic Welcome naming refs.
func (e *env) welcome(sender, convo string, suite uint16, refs ...kpd.Ref) kpd.Welcome {
	data := make([]byte, 200)
	rand.Read(data)
	return kpd.Welcome{ID: kpd.WelcomeID(data), ConvoID: convo, Sender: sender, CipherSuite: suite, Data: data, Refs: refs}
}

// wantCode fails the test unless err carries code.
func wantCode(t testing.TB, err error, code kpd.Code) *kpd.Error {
	t.Helper()
	var ke *kpd.Error
	if !errors.As(err, &ke) || ke.Code != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
	return ke
}

const (
	alice = "did:plc:alice"
	bob   = "did:plc:bob"
	carol = "did:web:carol.example"
)
