package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

func TestTokens(t *testing.T) {
	e := newTestDB(t)
	h1, h2, h3 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	toks := []kpd.Token{
		{ID: "0202020202020202", Hash: h2, DID: alice, Label: "ci", CreatedAt: t0.Add(time.Minute)},
		{ID: "0101010101010101", Hash: h1, DID: alice, CreatedAt: t0},
		{ID: "0303030303030303", Hash: h3, DID: bob, CreatedAt: t0},
	}
	for _, tok := range toks {
		if err := e.PutToken(e.ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if did, err := e.TokenDID(e.ctx, h2); err != nil || did != alice {
		t.Fatalf("TokenDID = %q, %v", did, err)
	}
	_, err := e.TokenDID(e.ctx, bytes.Repeat([]byte{9}, 32))
	wantCode(t, err, kpd.CodeUnauthorized)

	got, err := e.Tokens(e.ctx, alice)
	if err != nil || !slices.EqualFunc(got, []kpd.Token{toks[1], toks[0]}, tokenEqual) {
		t.Fatalf("alice's tokens = %+v, %v", got, err)
	}
	if all, _ := e.Tokens(e.ctx, ""); len(all) != 3 || all[0].ID != "0101010101010101" || all[1].ID != "0303030303030303" {
		t.Fatalf("all tokens = %+v", all)
	}

	if err := e.RevokeToken(e.ctx, "0202020202020202"); err != nil {
		t.Fatal(err)
	}
	_, err = e.TokenDID(e.ctx, h2)
	wantCode(t, err, kpd.CodeUnauthorized)
	wantCode(t, e.RevokeToken(e.ctx, "0202020202020202"), kpd.CodeNotFound)
	wantCode(t, e.PutToken(e.ctx, kpd.Token{ID: "x", DID: alice}), kpd.CodeBadRequest)
}

func tokenEqual(a, b kpd.Token) bool {
	return a.ID == b.ID && bytes.Equal(a.Hash, b.Hash) && a.DID == b.DID && a.Label == b.Label && a.CreatedAt.Equal(b.CreatedAt)
}

// TestReopenKeepsEverything closes the database after every kind of change
// and checks that a new process sees all of it.
func TestReopenKeepsEverything(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 3)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	e.publishN(t, bob, "tablet", 2, 1)
	claimed := e.claimOne(t, alice, bob, "phone", 1).Ref
	acked := e.claimOne(t, alice, bob, "phone", 1).Ref
	wAcked := e.post(t, alice, "c", 1, acked)
	if _, err := e.Ack(e.ctx, bob, "phone", wAcked.WelcomeID); err != nil {
		t.Fatal(err)
	}
	e.claimOne(t, carol, bob, "phone", 1) // the last available one
	e.claimOne(t, carol, bob, "phone", 1) // the last resort
	wPending := e.post(t, alice, "c", 1, claimed)
	if err := e.PutToken(e.ctx, kpd.Token{ID: "0101", Hash: []byte{1, 1}, DID: alice, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}

	invBefore, listBefore := e.inventory(t, bob, "phone")
	devsBefore, _ := e.Devices(e.ctx, bob)
	stBefore, _ := e.WelcomeStatus(e.ctx, alice, wPending.WelcomeID)
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := Open(e.path, &Options{Clock: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.DB = db // the cleanup verifies and closes the reopened database
	inv, list := e.inventory(t, bob, "phone")
	if !inventoryEqual(inv, invBefore) || !slices.EqualFunc(list, listBefore, infoEqual) {
		t.Fatalf("after reopen:\n%+v %+v\nbefore:\n%+v %+v", inv, list, invBefore, listBefore)
	}
	devs, _ := e.Devices(e.ctx, bob)
	if len(devs) != len(devsBefore) || devs[0].PendingWelcomes != 1 || !devs[0].LastSeen.Equal(devsBefore[0].LastSeen) {
		t.Fatalf("devices after reopen = %+v, before %+v", devs, devsBefore)
	}
	st, err := e.WelcomeStatus(e.ctx, alice, wPending.WelcomeID)
	if err != nil || !slices.Equal(st.Recipients, stBefore.Recipients) || !st.CreatedAt.Equal(stBefore.CreatedAt) {
		t.Fatalf("status after reopen = %+v, %v", st, err)
	}
	if did, err := e.TokenDID(e.ctx, []byte{1, 1}); err != nil || did != alice {
		t.Fatalf("token after reopen: %q, %v", did, err)
	}
	// Sequences survive too: new KeyPackages still queue after old ones.
	newer := e.publishN(t, bob, "phone", 1, 2)
	if got := e.claimOne(t, alice, bob, "phone", 1).Ref; got != newer[0] {
		t.Fatalf("claimed %s after reopen, want %s", got, newer[0])
	}
	if _, err := e.Ack(e.ctx, bob, "phone", wPending.WelcomeID); err != nil {
		t.Fatal(err)
	}
}

func inventoryEqual(a, b *kpd.Inventory) bool {
	return a.Device == b.Device && a.LowWatermark == b.LowWatermark && slices.EqualFunc(a.Suites, b.Suites,
		func(x, y kpd.SuiteInventory) bool {
			if (x.LastResort == nil) != (y.LastResort == nil) {
				return false
			}
			return x.CipherSuite == y.CipherSuite && x.Available == y.Available && x.Claimed == y.Claimed &&
				(x.LastResort == nil || x.LastResort.Ref == y.LastResort.Ref && x.LastResort.Served == y.LastResort.Served &&
					x.LastResort.NotAfter.Equal(y.LastResort.NotAfter))
		})
}

func infoEqual(a, b kpd.KeyPackageInfo) bool {
	if (a.ClaimedAt == nil) != (b.ClaimedAt == nil) || a.ClaimedAt != nil && !a.ClaimedAt.Equal(*b.ClaimedAt) {
		return false
	}
	return a.Ref == b.Ref && a.CipherSuite == b.CipherSuite && a.State == b.State && a.LastResort == b.LastResort &&
		a.PublishedAt.Equal(b.PublishedAt) && a.NotAfter.Equal(b.NotAfter)
}

func TestOpenInUse(t *testing.T) {
	e := newTestDB(t)
	start := time.Now()
	_, err := Open(e.path, &Options{OpenTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), e.path) {
		t.Fatalf("second open: err = %v, want ErrInUse naming the file", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("open ignored its timeout")
	}
	if _, err := VerifyFile(e.path, 50*time.Millisecond); !errors.Is(err, ErrInUse) {
		t.Fatalf("VerifyFile of an open database: err = %v, want ErrInUse", err)
	}
}

func TestReadOnly(t *testing.T) {
	e := openTestDB(t)
	e.publishN(t, bob, "phone", 1, 2)
	if err := e.Ready(e.ctx); err != nil {
		t.Fatalf("ready: %v", err)
	}
	size, err := e.Size()
	if err != nil || size <= 0 {
		t.Fatalf("size = %d, %v", size, err)
	}
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	if vs, err := VerifyFile(e.path, time.Second); err != nil || len(vs) != 0 {
		t.Fatalf("VerifyFile = %v, %v", vs, err)
	}

	ro, err := Open(e.path, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if inv, _, err := ro.Inventory(e.ctx, bob, "phone", false); err != nil || suiteOf(inv, 1).Available != 2 {
		t.Fatalf("read-only inventory = %+v, %v", inv, err)
	}
	if _, _, err := ro.Publish(e.ctx, bob, "phone", []kpd.KeyPackage{e.newKP(1)}); err == nil {
		t.Fatal("publish on a read-only database succeeded")
	}
	if err := ro.Ready(e.ctx); err == nil {
		t.Fatal("a read-only database is ready")
	}
	if ro.Path() != e.path {
		t.Fatalf("path = %q", ro.Path())
	}
	// Two readers share the file.
	ro2, err := Open(e.path, &Options{ReadOnly: true, OpenTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	ro2.Close()

	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := ro.Verify(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("verify with a canceled context: %v", err)
	}
}

func TestSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpd.db")
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	update := func(fn func(tx *bolt.Tx) error) error { return bdb.Update(fn) }
	// initTo runs initSchema in a write transaction.
	initTo := func(target uint64, steps map[uint64]migration) (v uint64, err error) {
		err = update(func(tx *bolt.Tx) error {
			v, err = initSchema(tx, target, steps)
			return err
		})
		return v, err
	}

	if v, err := initTo(1, nil); err != nil || v != 1 {
		t.Fatalf("fresh database: %d, %v", v, err)
	}
	// Upgrades run each step in order, in the opening transaction.
	var ran []uint64
	steps := map[uint64]migration{
		1: func(tx *bolt.Tx) error {
			ran = append(ran, 1)
			return tx.Bucket(bucketMeta).Put([]byte("step1"), []byte{1})
		},
		2: func(tx *bolt.Tx) error { ran = append(ran, 2); return nil },
	}
	if v, err := initTo(3, steps); err != nil || v != 3 {
		t.Fatalf("upgrade to 3: %d, %v", v, err)
	}
	if !slices.Equal(ran, []uint64{1, 2}) {
		t.Fatalf("ran %v, want steps 1 and 2", ran)
	}
	wantVersion := func(want uint64) {
		t.Helper()
		bdb.View(func(tx *bolt.Tx) error {
			if v, _ := index.DecodeUint64(tx.Bucket(bucketMeta).Get(keySchemaVersion)); v != want {
				t.Errorf("schema version = %d, want %d", v, want)
			}
			return nil
		})
	}
	wantVersion(3)
	// A failing step leaves the database as it was.
	fail := map[uint64]migration{3: func(tx *bolt.Tx) error {
		tx.Bucket(bucketMeta).Put([]byte("half"), []byte{1})
		return errors.New("boom")
	}}
	if _, err := initTo(4, fail); err == nil {
		t.Fatal("failing migration succeeded")
	}
	bdb.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta).Get([]byte("half")) != nil {
			t.Error("a failed migration left its writes")
		}
		return nil
	})
	// The steps stop at a version they cannot upgrade, which is left as
	// it is (the caller runs the migrations that need transactions of
	// their own, or fails).
	if v, err := initTo(5, steps); err != nil || v != 3 {
		t.Fatalf("upgrade to 5 without a step from 3: %d, %v; want 3", v, err)
	}
	wantVersion(3)
	if _, err := initTo(2, nil); err == nil {
		t.Fatal("a newer schema was accepted")
	}
	// This kpd (an older schema) refuses a newer file, read-write and
	// read-only.
	if err := update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, index.Uint64(schemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	bdb.Close()
	if _, err := Open(path, nil); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("open of a newer schema: %v", err)
	}
	if _, err := Open(path, &Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a newer schema succeeded")
	}
	// Nor does it open a version it has no way up from.
	if bdb, err = bolt.Open(path, 0o600, nil); err != nil {
		t.Fatal(err)
	}
	if err := update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchemaVersion, index.Uint64(0)) }); err != nil {
		t.Fatal(err)
	}
	bdb.Close()
	if _, err := Open(path, nil); err == nil || !strings.Contains(err.Error(), "no migration from schema version 0") {
		t.Fatalf("open of schema version 0: %v", err)
	}

	// A bbolt file of something else is not adopted.
	other := filepath.Join(t.TempDir(), "other.db")
	odb, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	odb.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("stuff")); return err })
	odb.Close()
	if _, err := Open(other, nil); err == nil || !strings.Contains(err.Error(), "not a kpd database") {
		t.Fatalf("open of a foreign bbolt file: %v", err)
	}
}

// TestWriteBatchSemantics runs writers that share one batch: one writes and
// then fails (its writes must roll back, the others' must not), one refuses
// before writing (its error comes back without disturbing the batch).
func TestWriteBatchSemantics(t *testing.T) {
	e := newTestDB(t, func(o *Options) { o.MaxBatchDelay = 20 * time.Millisecond })
	boom := errors.New("boom")
	key := func(i int) []byte { return []byte(fmt.Sprintf("test-%d", i)) }
	const writers = 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.write(e.ctx, func(t *txn) error {
				switch i {
				case 3:
					return refuse(kpd.Errorf(kpd.CodeNotFound, "nothing"))
				case 5:
					if err := t.bucket(bucketMeta).Put(key(i), []byte{1}); err != nil {
						return err
					}
					return boom
				}
				return t.bucket(bucketMeta).Put(key(i), []byte{1})
			})
		}()
	}
	wg.Wait()
	e.read(e.ctx, func(tx *txn) error {
		for i := range writers {
			_, stored := tx.has(bucketMeta, key(i))
			switch {
			case i == 3:
				wantCode(t, errs[i], kpd.CodeNotFound)
			case i == 5:
				if !errors.Is(errs[i], boom) || stored {
					t.Errorf("failing writer: err %v, its write kept: %v", errs[i], stored)
				}
			case errs[i] != nil || !stored:
				t.Errorf("writer %d: err %v, stored %v", i, errs[i], stored)
			}
		}
		return nil
	})
}

// The store fsyncs every commit unless Options.NoSync says otherwise: the
// crash test kills kpd serve with SIGKILL, which keeps the page cache, so
// it cannot tell a missing fsync; this can.
func TestOpenSyncsByDefault(t *testing.T) {
	for _, o := range []*Options{nil, {}, {NoSync: true}} {
		db, err := Open(filepath.Join(t.TempDir(), "kpd.db"), o)
		if err != nil {
			t.Fatal(err)
		}
		want := o != nil && o.NoSync
		if db.bolt.NoSync != want {
			t.Errorf("Open with %+v: bbolt NoSync %v, want %v", o, db.bolt.NoSync, want)
		}
		db.Close()
	}
}
