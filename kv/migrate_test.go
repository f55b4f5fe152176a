package kv

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// toSchema3 rewrites the KeyPackages of a database in the layout kpd wrote
// up to schema 3: records keyed by their ref in key_packages, without Ref,
// whose bucket sequence is the publish sequence; device_key_packages
// listing each device's refs; pool holding the ref of each available
// regular KeyPackage at its (DID, device, suite, seq); device records
// without pool heads. It deletes kps and refs and sets the schema version
// to 3.
func toSchema3(tx *bolt.Tx) error {
	var old [3]*bolt.Bucket
	for i, name := range schema3Buckets {
		b, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		old[i] = b
	}
	keyPackages, deviceKPs, pool := old[0], old[1], old[2]
	kps := tx.Bucket(bucketKPs)
	err := kps.ForEach(func(k, v []byte) error {
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return err
		}
		ref := r.Ref
		r.Ref = nil
		b, err := encode(&r)
		if err != nil {
			return err
		}
		if err := keyPackages.Put(ref, b); err != nil {
			return err
		}
		if err := deviceKPs.Put(append(index.Device(r.DID, r.Device), ref...), nil); err != nil {
			return err
		}
		if r.State == kpd.StateAvailable && !r.LastResort {
			return pool.Put(bytes.Clone(k), ref)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := keyPackages.SetSequence(kps.Sequence()); err != nil {
		return err
	}
	devices := make(map[string][]byte)
	err = tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		var d deviceRecord
		if err := decode(v, &d); err != nil {
			return err
		}
		for s, c := range d.Suites {
			c.Head = 0
			d.Suites[s] = c
		}
		b, err := encode(&d)
		devices[string(k)] = b
		return err
	})
	if err != nil {
		return err
	}
	for k, b := range devices {
		if err := tx.Bucket(bucketDevices).Put([]byte(k), b); err != nil {
			return err
		}
	}
	for _, name := range [][]byte{bucketKPs, bucketRefs} {
		if err := tx.DeleteBucket(name); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMeta).Put(keySchemaVersion, index.Uint64(3))
}

// storeView is what the Store shows of a database: its counters, the
// devices of some DIDs with their inventories, and the listing of each of
// those devices.
type storeView struct {
	Stats    kpd.Stats                       `json:"stats"`
	Devices  map[string][]kpd.DeviceInfo     `json:"devices"`  // by DID
	Listings map[string][]kpd.KeyPackageInfo `json:"listings"` // by "DID device"
}

// view returns what the Store shows of the DIDs.
func (e *env) view(t testing.TB, dids ...string) storeView {
	t.Helper()
	v := storeView{Stats: e.stats(t), Devices: map[string][]kpd.DeviceInfo{}, Listings: map[string][]kpd.KeyPackageInfo{}}
	for _, did := range dids {
		devices, err := e.Devices(e.ctx, did)
		if err != nil {
			t.Fatal(err)
		}
		v.Devices[did] = devices
		for _, d := range devices {
			_, v.Listings[did+" "+d.Device] = e.inventory(t, did, d.Device)
		}
	}
	return v
}

// wantView fails the test unless the Store shows want of the DIDs.
func (e *env) wantView(t testing.TB, want storeView, dids ...string) {
	t.Helper()
	got, err := json.Marshal(e.view(t, dids...))
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, w) {
		t.Fatalf("the store shows\n%s\nwant\n%s", got, w)
	}
}

// wantFIFO claims from every device and suite of a listing until its pool
// is empty: the claims must hand out its available regular KeyPackages
// that have not expired, in listing (publish) order, and then no regular
// one.
func (e *env) wantFIFO(t testing.TB, listings map[string][]kpd.KeyPackageInfo) {
	t.Helper()
	for _, key := range slices.Sorted(maps.Keys(listings)) {
		did, device, _ := strings.Cut(key, " ")
		pools := make(map[uint16][]kpd.Ref)
		for _, kp := range listings[key] {
			if _, ok := pools[kp.CipherSuite]; !ok {
				pools[kp.CipherSuite] = nil
			}
			if kp.State == kpd.StateAvailable && !kp.LastResort && kp.NotAfter.After(e.clock.Now()) {
				pools[kp.CipherSuite] = append(pools[kp.CipherSuite], kp.Ref)
			}
		}
		for suite, refs := range pools {
			for i, want := range refs {
				if got := e.claimOne(t, alice, did, device, suite); got.Ref != want || got.LastResort {
					t.Fatalf("%s suite %d: claim %d = %s (last resort %v), want %s", key, suite, i, got.Ref, got.LastResort, want)
				}
			}
			res := e.claim(t, kpd.ClaimRequest{Claimer: alice, CipherSuite: suite,
				Targets: []kpd.ClaimTarget{{DID: did, Devices: []string{device}}}})
			if len(res.KeyPackages) > 0 && !res.KeyPackages[0].LastResort {
				t.Fatalf("%s suite %d: claimed %s from a drained pool", key, suite, res.KeyPackages[0].Ref)
			}
		}
	}
}

// heads returns the pool heads of a device by suite.
func (e *env) heads(t testing.TB, did, device string) map[uint16]uint64 {
	t.Helper()
	out := make(map[uint16]uint64)
	err := e.read(e.ctx, func(tx *txn) error {
		d, err := tx.ownDevice(did, device)
		if err != nil {
			return err
		}
		for s, c := range d.Suites {
			out[s] = c.Head
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// reopenAsSchema3 closes e's database, rewrites it in the layout of
// schema 3 (toSchema3) and opens it again, which migrates it.
func (e *env) reopenAsSchema3(t *testing.T, opts ...func(*Options)) {
	t.Helper()
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(toSchema3)
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("rewrite as schema 3: %v", err)
	}
	if _, err := Open(e.path, &Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "schema version 3") {
		t.Fatalf("read-only open of a schema 3 database: %v", err)
	}
	o := &Options{Clock: e.clock.Now}
	for _, f := range opts {
		f(o)
	}
	if e.DB, err = Open(e.path, o); err != nil {
		t.Fatal(err)
	}
}

// TestMigrationToV4 fills a database with a random workload, rewrites it
// in the layout of schema 3 and opens it: the migration keeps every
// counter, inventory and listing, sets each pool's head to its oldest
// available regular KeyPackage, claims stay FIFO, new KeyPackages come
// after the old ones, and the checker run at cleanup finds the database
// sound.
func TestMigrationToV4(t *testing.T) {
	e := newTestDB(t, workloadOptions)
	e.workload(t, 17, 400, nil)
	// A pool whose oldest available KeyPackage comes after claimed ones
	// and a last resort, and one with nothing available.
	e.publishN(t, bob, "ipad", 1, 2)
	e.publish(t, bob, "ipad", e.newLastResort(1))
	oldest := e.publishN(t, bob, "ipad", 1, 2)[0]
	e.publishN(t, bob, "ipad", 2, 1)
	for range 2 {
		e.claimOne(t, alice, bob, "ipad", 1)
	}
	last := e.claimOne(t, alice, bob, "ipad", 2)
	dids := []string{alice, bob, carol}
	before := e.view(t, dids...)

	e.reopenAsSchema3(t, workloadOptions)
	e.wantView(t, before, dids...)
	e.wantStatsCounted(t, "after migration")
	heads := e.heads(t, bob, "ipad")
	if want := e.record(t, oldest).Seq; heads[1] != want {
		t.Errorf("head of a pool = %d, want %d, its oldest available KeyPackage's seq", heads[1], want)
	}
	if want := e.record(t, last.Ref).Seq + 1; heads[2] != want {
		t.Errorf("head of a drained pool = %d, want %d, one past its last seq", heads[2], want)
	}

	e.wantFIFO(t, before.Listings)
	kp := e.newKP(2)
	e.publish(t, bob, "ipad", kp)
	if seq := e.record(t, kp.Ref).Seq; seq <= e.record(t, last.Ref).Seq {
		t.Errorf("a KeyPackage published after the migration has seq %d, not above the others", seq)
	}
	if got := e.claimOne(t, alice, bob, "ipad", 2); got.Ref != kp.Ref {
		t.Errorf("claim after a publish = %s, want the new %s", got.Ref, kp.Ref)
	}
}

// TestMigrationOfASchema3File opens testdata/schema3.bolt, written by kpd
// at schema 3 (see testdata/README.md): the Store shows what that kpd
// showed (testdata/schema3.json), the pools get their heads, and claims,
// acks and publishes work on the migrated records.
func TestMigrationOfASchema3File(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "schema3.bolt"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kpd.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(filepath.Join("testdata", "schema3.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want storeView
	if err := json.Unmarshal(js, &want); err != nil {
		t.Fatal(err)
	}
	e := verified(t, openTestFile(t, path, func(o *Options) { o.Outbox = true }))
	e.wantView(t, want, bob)
	e.wantStatsCounted(t, "after migration")
	// phone: seqs 1-9, 1-2 (suite 1) and 3 (suite 2) claimed; tablet:
	// 10 claimed, 11 and 12 last resorts.
	for device, heads := range map[string]map[uint16]uint64{"phone": {1: 4, 2: 8}, "tablet": {1: 13}} {
		if got := e.heads(t, bob, device); !maps.Equal(got, heads) {
			t.Errorf("%s: heads %v, want %v", device, got, heads)
		}
	}

	// Two hours on, one of the phone's KeyPackages has expired.
	e.clock.Advance(2 * time.Hour)
	e.wantFIFO(t, want.Listings)
	kp := e.newKP(1)
	e.publish(t, bob, "tablet", kp)
	if got := e.claimOne(t, alice, bob, "tablet", 1); got.Ref != kp.Ref || e.record(t, kp.Ref).Seq != 13 {
		t.Fatalf("claim from the tablet = %s, want the KeyPackage published after the migration (seq 13)", got.Ref)
	}
	for _, device := range []string{"phone", "tablet"} {
		pw, err := e.PendingWelcomes(e.ctx, bob, device, kpd.ListWelcomesOptions{})
		if err != nil || len(pw) != 1 {
			t.Fatalf("%s: pending welcomes %+v, %v", device, pw, err)
		}
		if _, err := e.Ack(e.ctx, bob, device, pw[0].WelcomeID); err != nil {
			t.Fatalf("%s: ack: %v", device, err)
		}
	}
	// The ack consumed the phone's claimed KeyPackage and released the
	// tablet's retired last resort, which went.
	_, list := e.inventory(t, bob, "phone")
	if n := len(slices.DeleteFunc(list, func(k kpd.KeyPackageInfo) bool { return k.State != kpd.StateConsumed })); n != 2 {
		t.Errorf("phone: %d consumed KeyPackages after the ack, want 2", n)
	}
	_, list = e.inventory(t, bob, "tablet")
	if n := len(slices.DeleteFunc(list, func(k kpd.KeyPackageInfo) bool { return !k.LastResort })); n != 1 {
		t.Errorf("tablet: %d last resorts after the ack, want 1", n)
	}
	e.wantStatsCounted(t, "after the acks")
}
