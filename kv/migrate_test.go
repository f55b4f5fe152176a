package kv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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
		if err := deviceKPs.Put(index.DeviceRef(r.DID, r.Device, ref), nil); err != nil {
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

// closeAsSchema3 closes e's database and rewrites it in the layout of
// schema 3 (toSchema3), then applies tweak (if not nil) to the result.
func (e *env) closeAsSchema3(t *testing.T, tweak func(tx *bolt.Tx) error) {
	t.Helper()
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		if err := toSchema3(tx); err != nil || tweak == nil {
			return err
		}
		return tweak(tx)
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("rewrite as schema 3: %v", err)
	}
}

// reopenAsSchema3 closes e's database, rewrites it in the layout of
// schema 3 (toSchema3) and opens it again, which migrates it.
func (e *env) reopenAsSchema3(t *testing.T, opts ...func(*Options)) {
	t.Helper()
	e.closeAsSchema3(t, nil)
	wantSchema3(t, e.path)
	o := &Options{Clock: e.clock.Now}
	for _, f := range opts {
		f(o)
	}
	var err error
	if e.DB, err = Open(e.path, o); err != nil {
		t.Fatal(err)
	}
}

// wantSchema3 fails the test unless the file at path is a schema 3
// database that read-only opens, VerifyFile (kpd verify) included, refuse
// and tell to open read-write.
func wantSchema3(t *testing.T, path string) {
	t.Helper()
	wantReadOnlyRefused(t, path, fmt.Sprintf("schema version 3, this kpd reads %d (open it read-write once to migrate)", schemaVersion))
}

// wantReadOnlyRefused fails the test unless a read-only Open and VerifyFile
// of the file at path fail with an error containing want.
func wantReadOnlyRefused(t *testing.T, path, want string) {
	t.Helper()
	if db, err := Open(path, &Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), want) {
		if err == nil {
			db.Close()
		}
		t.Fatalf("read-only open: %v, want %q", err, want)
	}
	if vs, err := VerifyFile(path, time.Second); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("VerifyFile: %v, %v, want %q", vs, err, want)
	}
}

// wantMigrating fails the test unless the file at path is a database
// whose migration to schema 4 began and did not finish: read-only opens,
// VerifyFile included, refuse it and tell to open read-write, and a kpd
// that reads schema 3 (its initSchema) refuses it as newer than itself.
func wantMigrating(t *testing.T, path string) {
	t.Helper()
	wantReadOnlyRefused(t, path, "the migration to schema 4 is unfinished (open it read-write once to finish it)")
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	err = bdb.Update(func(tx *bolt.Tx) error {
		_, err := initSchema(tx, 3, migrations)
		return err
	})
	// The mark records the version the migration leads to, the current one.
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("schema version %d is newer than this kpd's 3", schemaVersion)) {
		t.Fatalf("a schema 3 kpd opening a database migrating to schema 4: %v", err)
	}
}

// eachMigrateBatch runs test with the default batch size of the migration
// to schema 4 and with batches of 7 KeyPackages, so that a migration takes
// many batches and some of them end inside a device's KeyPackages.
func eachMigrateBatch(t *testing.T, test func(t *testing.T)) {
	for _, n := range []int{migrateBatch, 7} {
		t.Run(fmt.Sprintf("batch=%d", n), func(t *testing.T) {
			setMigrateBatch(t, n)
			test(t)
		})
	}
}

// setMigrateBatch sets the batch size of the migration to schema 4 until
// the test ends.
func setMigrateBatch(t *testing.T, n int) {
	old := migrateBatch
	migrateBatch = n
	t.Cleanup(func() { migrateBatch = old })
}

// failMigrateBatch makes the migration to schema 4 fail with err before it
// commits its batch number k (counted from 0 in each Open; the final
// transaction is numbered one past the last batch), until the test ends
// or sets beforeMigrateCommit to nil.
func failMigrateBatch(t *testing.T, k int, err error) {
	beforeMigrateCommit = func(batch int, _ bool) error {
		if batch == k {
			return err
		}
		return nil
	}
	t.Cleanup(func() { beforeMigrateCommit = nil })
}

// progressLog records the calls of Options.MigrationProgress.
type progressLog struct{ done, total []int }

func (p *progressLog) record(done, total int) {
	p.done, p.total = append(p.done, done), append(p.total, total)
}

// openMigrated opens the database at path, which migrates it, reporting
// progress to p (if not nil), and closes it.
func openMigrated(t *testing.T, path string, p *progressLog) error {
	t.Helper()
	o := &Options{NoSync: true}
	if p != nil {
		o.MigrationProgress = p.record
	}
	db, err := Open(path, o)
	if err != nil {
		return err
	}
	return db.Close()
}

// dumpFile returns the content of the bbolt file at path: for every
// bucket in order, a line with its sequence and one per key and value.
func dumpFile(t *testing.T, path string) []string {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	var lines []string
	err = bdb.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			lines = append(lines, fmt.Sprintf("%s: sequence %d", name, b.Sequence()))
			return b.ForEach(func(k, v []byte) error {
				lines = append(lines, fmt.Sprintf("%s = %x", describeKey(name, k), v))
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// entries counts the entries of a bucket in a dump.
func entries(dump []string, bucket []byte) int {
	n := 0
	for _, l := range dump {
		if strings.HasPrefix(l, string(bucket)+"/") {
			n++
		}
	}
	return n
}

// wantDump fails the test unless got equals want, naming the first line
// that differs.
func wantDump(t *testing.T, got, want []string) {
	t.Helper()
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("line %d of the dump: %s\nwant %s", i, got[i], want[i])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("the dump has %d lines, want %d", len(got), len(want))
	}
}

// copyFile copies the file at src to a new file in t.TempDir() and returns
// its path.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestMigrationToV4 fills a database with a random workload, rewrites it
// in the layout of schema 3 and opens it: the migration keeps every
// counter, inventory and listing, sets each pool's head to its oldest
// available regular KeyPackage, claims stay FIFO, new KeyPackages come
// after the old ones, and the checker run at cleanup finds the database
// sound.
func TestMigrationToV4(t *testing.T) { eachMigrateBatch(t, testMigrationToV4) }

func testMigrationToV4(t *testing.T) {
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
func TestMigrationOfASchema3File(t *testing.T) { eachMigrateBatch(t, testMigrationOfASchema3File) }

func testMigrationOfASchema3File(t *testing.T) {
	path := copyFile(t, filepath.Join("testdata", "schema3.bolt"))
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

// schema3File writes a database in the layout of schema 3, from a random
// workload, and returns its path and how many KeyPackages it holds. Its
// device_key_packages does not list one of them and lists one that does
// not exist, which the migration must survive.
func schema3File(t *testing.T) (string, int) {
	t.Helper()
	e := openTestDB(t, workloadOptions)
	e.workload(t, 23, 500, nil)
	e.closeAsSchema3(t, func(tx *bolt.Tx) error {
		listed := tx.Bucket(bucketDeviceKPsV3)
		k, _ := listed.Cursor().Last()
		did, device, _, err := index.DecodeDeviceRef(k)
		if err != nil {
			return err
		}
		if err := listed.Delete(k); err != nil {
			return err
		}
		return listed.Put(index.DeviceRef(did, device, bytes.Repeat([]byte{0xee}, 32)), nil)
	})
	dump := dumpFile(t, e.path)
	n := entries(dump, bucketKeyPackagesV3)
	if listed := entries(dump, bucketDeviceKPsV3); n < 100 || listed != n {
		t.Fatalf("the workload left %d KeyPackages, listed %d times", n, listed)
	}
	return e.path, n
}

// TestMigrationToV4Resumes interrupts the migration of a schema 3 database
// before the commit of one of its batches, or of its final transaction:
// Open fails and leaves a schema 3 database (which read-only opens and
// kpd verify refuse) in which every KeyPackage is either indexed, with its
// record in kps, or still in key_packages. The next Open finishes the
// migration, and the file then holds exactly what an uninterrupted
// migration of the same database gives, and passes Verify.
func TestMigrationToV4Resumes(t *testing.T) {
	setMigrateBatch(t, 7)
	base, n := schema3File(t)
	var progress progressLog
	clean := copyFile(t, base)
	if err := openMigrated(t, clean, &progress); err != nil {
		t.Fatal(err)
	}
	want := dumpFile(t, clean)
	// Both passes take every KeyPackage, 7 at a time.
	batches := len(progress.done)
	if least := 2 * ((n + 6) / 7); batches < least {
		t.Fatalf("%d KeyPackages migrated in %d batches of at most 7", n, batches)
	}

	for _, k := range []int{0, 1, batches / 4, batches / 2, batches - 1, batches} {
		t.Run(fmt.Sprintf("k=%d", k), func(t *testing.T) {
			path := copyFile(t, base)
			crash := errors.New("crash")
			failMigrateBatch(t, k, crash)
			if err := openMigrated(t, path, nil); !errors.Is(err, crash) {
				t.Fatalf("open with batch %d failing: %v", k, err)
			}
			beforeMigrateCommit = nil
			wantMigrating(t, path)
			done := 0
			if k > 0 {
				done = progress.done[k-1]
			}
			got := dumpFile(t, path)
			listed, left, kps, refs := entries(got, bucketDeviceKPsV3), entries(got, bucketKeyPackagesV3), entries(got, bucketKPs), entries(got, bucketRefs)
			if listed+left != 2*n-done || left+refs != n || kps < refs {
				t.Fatalf("after %d steps of %d: %d entries of device_key_packages, %d of key_packages, %d of kps and %d of refs",
					done, 2*n, listed, left, kps, refs)
			}

			if err := openMigrated(t, path, nil); err != nil {
				t.Fatal(err)
			}
			wantDump(t, dumpFile(t, path), want)
			if vs, err := VerifyFile(path, time.Second); err != nil || len(vs) > 0 {
				t.Fatalf("verify: %v, %v", vs, err)
			}
		})
	}
}

// TestMigrationProgress checks Options.MigrationProgress: it hears after
// every batch, with counts growing by at most a batch up to the total,
// which is the number of steps (two per KeyPackage) left when Open began.
func TestMigrationProgress(t *testing.T) {
	setMigrateBatch(t, 7)
	path, n := schema3File(t)
	var first progressLog
	failMigrateBatch(t, 3, errors.New("crash"))
	if err := openMigrated(t, path, &first); err == nil {
		t.Fatal("the migration did not fail")
	}
	if !slices.Equal(first.done, []int{7, 14, 21}) || !slices.Equal(first.total, []int{2 * n, 2 * n, 2 * n}) {
		t.Fatalf("progress before the failure: %v of %v, want 7, 14, 21 of %d", first.done, first.total, 2*n)
	}
	beforeMigrateCommit = nil

	var second progressLog
	if err := openMigrated(t, path, &second); err != nil {
		t.Fatal(err)
	}
	total := 2*n - 21
	if len(second.done) == 0 || second.done[len(second.done)-1] != total {
		t.Fatalf("progress %v, want it to end at %d", second.done, total)
	}
	prev := 0
	for i, done := range second.done {
		if done <= prev || done > prev+7 || second.total[i] != total {
			t.Fatalf("progress call %d: %d of %d after %d", i, done, second.total[i], prev)
		}
		prev = done
	}
	var third progressLog
	if err := openMigrated(t, path, &third); err != nil || len(third.done) > 0 {
		t.Fatalf("open of a migrated database: progress %v, %v", third.done, err)
	}
}

// TestMigrationToV4RefusesDuplicateKeys gives two schema 3 KeyPackages of
// one device and suite the same seq, the second listed in
// device_key_packages or not: Open fails naming both refs, and nothing is
// lost: the batch that met the second one committed nothing, and every
// KeyPackage is either indexed by ref or still in key_packages.
func TestMigrationToV4RefusesDuplicateKeys(t *testing.T) {
	for _, unlist := range []bool{false, true} {
		t.Run(fmt.Sprintf("unlisted=%v", unlist), func(t *testing.T) {
			setMigrateBatch(t, 7)
			e := openTestDB(t)
			refs := e.publishN(t, bob, "phone", 1, 30)
			a, b := refs[3], refs[20]
			e.closeAsSchema3(t, func(tx *bolt.Tx) error {
				var ra, rb kpRecord
				old := tx.Bucket(bucketKeyPackagesV3)
				if err := decode(old.Get(rawRef(t, a)), &ra); err != nil {
					return err
				}
				if err := decode(old.Get(rawRef(t, b)), &rb); err != nil {
					return err
				}
				if unlist {
					if err := tx.Bucket(bucketDeviceKPsV3).Delete(index.DeviceRef(bob, "phone", rawRef(t, b))); err != nil {
						return err
					}
				}
				rb.Seq = ra.Seq
				return (&txn{tx: tx}).put(bucketKeyPackagesV3, rawRef(t, b), &rb)
			})
			err := openMigrated(t, e.path, nil)
			if err == nil || !strings.Contains(err.Error(), string(a)) || !strings.Contains(err.Error(), string(b)) {
				t.Fatalf("open with two KeyPackages at one key: %v, want an error naming %s and %s", err, a, b)
			}
			wantMigrating(t, e.path)
			dump := dumpFile(t, e.path)
			listed, left := entries(dump, bucketDeviceKPsV3), entries(dump, bucketKeyPackagesV3)
			// Each pass commits whole batches of 7 until it runs out.
			copied, indexed := len(refs)-listed, len(refs)-left
			if unlist {
				copied--
			}
			if (listed > 0 && copied%7 != 0) || indexed%7 != 0 {
				t.Errorf("%d KeyPackages copied (%d left), %d indexed: not whole batches of 7", copied, listed, indexed)
			}
			has := func(bucket []byte, ref kpd.Ref) bool {
				return slices.ContainsFunc(dump, func(l string) bool { return strings.HasPrefix(l, string(bucket)+"/"+string(ref)+" = ") })
			}
			for _, ref := range refs {
				if has(bucketRefs, ref) == has(bucketKeyPackagesV3, ref) {
					t.Errorf("KeyPackage %s: indexed %v, in key_packages %v", ref, has(bucketRefs, ref), has(bucketKeyPackagesV3, ref))
				}
			}
		})
	}
}

// rawRef returns the bytes of a ref.
func rawRef(t *testing.T, ref kpd.Ref) []byte {
	t.Helper()
	b, err := ref.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A schema 4 database becomes schema 5 when opened read-write, with its
// records as they were; until then read-only opens refuse it, and a kpd of
// schema 4 refuses it afterwards, since it would take spent KeyPackages
// for live ones.
func TestMigrationToV5(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpd.db")
	e := openTestFile(t, path)
	e.publishN(t, bob, "phone", 1, 3)
	claimed := e.claimOne(t, alice, bob, "phone", 1).Ref
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bdb.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, index.Uint64(4))
	}); err != nil {
		t.Fatal(err)
	}
	bdb.Close()
	wantReadOnlyRefused(t, path, "schema version 4, this kpd reads 5")

	e = openTestFile(t, path)
	if rec := e.record(t, claimed); rec == nil || rec.State != kpd.StateClaimed {
		t.Fatalf("claimed KeyPackage after the migration: %+v", rec)
	}
	if inv, _ := e.inventory(t, bob, "phone"); suiteOf(inv, 1).Available != 2 || suiteOf(inv, 1).Claimed != 1 {
		t.Fatalf("inventory after the migration: %+v", suiteOf(inv, 1))
	}
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	if vs, err := VerifyFile(path, time.Second); err != nil || len(vs) != 0 {
		t.Fatalf("verify after the migration: %v %v", vs, err)
	}
	bdb, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	err = bdb.Update(func(tx *bolt.Tx) error {
		v, err := readSchemaVersion(tx)
		if err == nil && v != 5 {
			err = fmt.Errorf("schema version %d after the migration, want 5", v)
		}
		if err != nil {
			return err
		}
		_, err = initSchema(tx, 4, migrations)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "schema version 5 is newer than this kpd's 4") {
		t.Fatalf("a schema 4 kpd opening a schema 5 database: %v", err)
	}
}
