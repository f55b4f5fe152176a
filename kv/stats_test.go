package kv

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// stats returns the store's counters (without the size) and fails the test
// on error.
func (e *env) stats(t testing.TB) kpd.Stats {
	t.Helper()
	s, err := e.Stats(e.ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if s.SizeBytes <= 0 {
		t.Fatalf("stats size = %d", s.SizeBytes)
	}
	s.SizeBytes = 0
	return s
}

// countStats counts what Stats reports by reading every record, without
// the store's own accounting code.
func (e *env) countStats(t testing.TB) kpd.Stats {
	t.Helper()
	s := kpd.Stats{Suites: []kpd.SuiteStats{}, PoolSizes: make([]int64, len(kpd.PoolSizeBounds)+1),
		Deliveries: map[kpd.DeliveryState]int64{kpd.DeliveryPending: 0, kpd.DeliveryAcked: 0, kpd.DeliveryRejected: 0, kpd.DeliveryExpired: 0}}
	suites := map[uint16]*kpd.SuiteStats{}
	pools := map[string]int{} // device key + suite → available regular KeyPackages
	err := e.bolt.View(func(tx *bolt.Tx) error {
		tx.Bucket(bucketKPs).ForEach(func(k, v []byte) error {
			var r kpRecord
			if err := decode(v, &r); err != nil {
				t.Fatal(err)
			}
			if r.Spent { // gone but for its ref
				return nil
			}
			c := suites[r.Suite]
			if c == nil {
				c = &kpd.SuiteStats{CipherSuite: r.Suite}
				suites[r.Suite] = c
			}
			switch {
			case r.LastResort:
				if !r.Retired {
					c.LastResort++
				}
			case r.State == kpd.StateAvailable:
				c.Available++
				pools[fmt.Sprintf("%x/%d", index.Device(r.DID, r.Device), r.Suite)]++
			case r.State == kpd.StateClaimed:
				c.Claimed++
			case r.State == kpd.StateConsumed:
				c.Consumed++
			}
			return nil
		})
		tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var d deviceRecord
			if err := decode(v, &d); err != nil {
				t.Fatal(err)
			}
			s.Devices++
			for suite := range d.Suites {
				n := pools[fmt.Sprintf("%x/%d", k, suite)]
				bucket := len(kpd.PoolSizeBounds)
				for i, bound := range kpd.PoolSizeBounds {
					if n <= bound {
						bucket = i
						break
					}
				}
				s.PoolSizes[bucket]++
			}
			return nil
		})
		tx.Bucket(bucketDeliveries).ForEach(func(k, v []byte) error {
			var d deliveryRecord
			if err := decode(v, &d); err != nil {
				t.Fatal(err)
			}
			s.Deliveries[d.Status.State]++
			return nil
		})
		s.Welcomes = int64(tx.Bucket(bucketWelcomes).Stats().KeyN)
		s.PendingEvents = int64(tx.Bucket(bucketOutbox).Stats().KeyN)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, suite := range slices.Sorted(maps.Keys(suites)) {
		if c := suites[suite]; *c != (kpd.SuiteStats{CipherSuite: suite}) {
			s.Suites = append(s.Suites, *c)
		}
	}
	return s
}

// wantStatsCounted fails the test unless Stats equals a fresh count.
func (e *env) wantStatsCounted(t testing.TB, step string) kpd.Stats {
	t.Helper()
	got, want := e.stats(t), e.countStats(t)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: stats\n%+v\nrecords say\n%+v", step, got, want)
	}
	return got
}

// workload runs n random operations of every kind on a few devices, with
// the clock moving and the sweeper running now and then. check, if not
// nil, runs every 50 operations.
func (e *env) workload(t testing.TB, seed uint64, n int, check func(step int)) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	dids := []string{alice, bob, carol}
	devices := []string{"phone", "tablet", "watch"}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	type claim struct {
		claimer string
		kp      kpd.ClaimedKeyPackage
	}
	var claimed []claim
	for i := range n {
		did, device, suite := pick(dids), pick(devices), uint16(1+rng.IntN(2))
		switch op := rng.IntN(100); {
		case op < 25:
			kps := make([]kpd.KeyPackage, 1+rng.IntN(6))
			for j := range kps {
				kps[j] = e.kpExpiring(suite, j == 0 && rng.IntN(4) == 0, time.Duration(1+rng.IntN(72))*time.Hour)
			}
			e.publish(t, did, device, kps...)
		case op < 50:
			claimer := pick(dids)
			res, err := e.Claim(e.ctx, kpd.ClaimRequest{Claimer: claimer, CipherSuite: suite,
				Targets: []kpd.ClaimTarget{{DID: did}}, AllOrNothing: rng.IntN(4) == 0})
			if kpd.ErrorCode(err) == kpd.CodeConflict {
				continue
			} else if err != nil {
				t.Fatal(err)
			}
			for _, kp := range res.KeyPackages {
				claimed = append(claimed, claim{claimer, kp})
			}
		case op < 62 && len(claimed) > 0:
			k := rng.IntN(len(claimed))
			c := claimed[k]
			claimed = append(claimed[:k], claimed[k+1:]...)
			sender := c.claimer
			if rng.IntN(5) == 0 {
				sender = pick(dids)
			}
			if _, err := e.PostWelcome(e.ctx, e.welcome(sender, "c", c.kp.CipherSuite, c.kp.Ref)); err != nil {
				t.Fatal(err)
			}
		case op < 75:
			pw, err := e.PendingWelcomes(e.ctx, did, device, kpd.ListWelcomesOptions{})
			if err != nil || len(pw) == 0 {
				continue
			}
			switch rng.IntN(3) {
			case 0:
				_, err = e.Ack(e.ctx, did, device, pw[0].WelcomeID)
			case 1:
				_, err = e.Reject(e.ctx, did, device, pw[0].WelcomeID, kpd.ReasonOther, "")
			default:
				_, _, err = e.Take(e.ctx, did, device, "")
			}
			if err != nil {
				t.Fatal(err)
			}
		case op < 82:
			_, list, err := e.Inventory(e.ctx, did, device, true)
			if err != nil {
				continue
			}
			var refs []kpd.Ref
			for _, kp := range list {
				if rng.IntN(2) == 0 {
					refs = append(refs, kp.Ref)
				}
			}
			if rng.IntN(2) == 0 {
				_, _, err = e.DeleteKeyPackages(e.ctx, did, device, refs)
			} else {
				_, err = e.Sync(e.ctx, did, device, refs)
			}
			if err != nil {
				t.Fatal(err)
			}
		case op < 85:
			if err := e.DeleteDevice(e.ctx, did, device); err != nil && kpd.ErrorCode(err) != kpd.CodeNotFound {
				t.Fatal(err)
			}
		default:
			e.clock.Advance(time.Duration(rng.IntN(150)) * time.Minute)
			if rng.IntN(3) == 0 {
				e.sweep(t)
			}
		}
		if check != nil && (i+1)%50 == 0 {
			check(i + 1)
		}
	}
}

func workloadOptions(o *Options) {
	o.Outbox = true
	o.LowWatermark = 2
	o.SweepBatchSize = 7
	o.WelcomeRetention = 24 * time.Hour
	o.ClaimRetention = 36 * time.Hour
	o.ConsumedRetention = 48 * time.Hour
}

// TestStatsEqualACount runs a random workload and compares Stats with a
// count of the records along the way.
func TestStatsEqualACount(t *testing.T) {
	e := newTestDB(t, workloadOptions)
	if s := e.wantStatsCounted(t, "empty"); s.Devices != 0 || len(s.Suites) != 0 || s.PoolSizes[0] != 0 {
		t.Fatalf("stats of an empty store: %+v", s)
	}
	e.workload(t, 7, 600, func(step int) { e.wantStatsCounted(t, fmt.Sprint("after ", step, " operations")) })
	s := e.wantStatsCounted(t, "end")
	// The workload reached every kind of record.
	if s.Devices == 0 || s.Welcomes == 0 || s.PendingEvents == 0 || len(s.Suites) == 0 ||
		s.Deliveries[kpd.DeliveryAcked] == 0 || s.Deliveries[kpd.DeliveryExpired] == 0 {
		t.Fatalf("a workload that reached too little: %+v", s)
	}
	// Two sweeps far apart: the first ends every delivery, the second
	// purges them; then nothing but empty pools is left.
	for range 2 {
		e.clock.Advance(100 * 24 * time.Hour)
		e.sweep(t)
	}
	s = e.wantStatsCounted(t, "everything swept")
	if len(s.Suites) != 0 || s.Welcomes != 0 || s.Deliveries[kpd.DeliveryExpired] != 0 || s.PoolSizes[0] == 0 {
		t.Fatalf("after sweeping everything: %+v", s)
	}
}

// downgrade turns a database into what schema 1 wrote: the KeyPackage
// layout of schema 3 (toSchema3), and no store-wide counters, outbox or
// time indexes of deliveries and Welcomes.
func downgrade(t *testing.T, path string) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	err = bdb.Update(func(tx *bolt.Tx) error {
		if err := toSchema3(tx); err != nil {
			return err
		}
		for _, name := range [][]byte{bucketSince, bucketFinished, bucketOrphans, bucketOutbox} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Delete(keyStats); err != nil {
			return err
		}
		return meta.Put(keySchemaVersion, index.Uint64(1))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMigrationToV2 opens a schema 1 database: the migration computes the
// counters and fills the sweeper's indexes.
func TestMigrationToV2(t *testing.T) {
	opts := func(o *Options) { workloadOptions(o); o.Outbox = false }
	e := newTestDB(t, opts)
	e.workload(t, 11, 300, nil)
	// A pending delivery and a Welcome orphaned by a device deletion, for
	// the sweeper to find after the migration.
	e.publishN(t, bob, "ipad", 1, 2)
	pending := e.post(t, alice, "c", 1, e.claimOne(t, alice, bob, "ipad", 1).Ref)
	e.publishN(t, carol, "ipad", 1, 1)
	orphan := e.post(t, alice, "c", 1, e.claimOne(t, alice, carol, "ipad", 1).Ref)
	if err := e.DeleteDevice(e.ctx, carol, "ipad"); err != nil {
		t.Fatal(err)
	}
	before := e.wantStatsCounted(t, "before")
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	downgrade(t, e.path)

	if _, err := Open(e.path, &Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "schema version 1") {
		t.Fatalf("read-only open of a schema 1 database: %v", err)
	}
	o := &Options{Clock: e.clock.Now}
	opts(o)
	db, err := Open(e.path, o)
	if err != nil {
		t.Fatal(err)
	}
	e.DB = db
	if after := e.wantStatsCounted(t, "after migration"); !reflect.DeepEqual(after, before) {
		t.Fatalf("stats after migration\n%+v\nbefore\n%+v", after, before)
	}
	db.bolt.View(func(tx *bolt.Tx) error {
		if v, _ := index.DecodeUint64(tx.Bucket(bucketMeta).Get(keySchemaVersion)); v != schemaVersion {
			t.Errorf("schema version %d after migration", v)
		}
		return nil
	})
	e.clock.Advance(48 * time.Hour)
	e.sweep(t)
	if st, err := e.WelcomeStatus(e.ctx, alice, pending.WelcomeID); err != nil || st.Recipients[0].Status != kpd.DeliveryExpired {
		t.Fatalf("pending delivery from before the migration, after a sweep: %+v, %v", st, err)
	}
	_, err = e.WelcomeStatus(e.ctx, alice, orphan.WelcomeID)
	wantCode(t, err, kpd.CodeNotFound)
	e.wantStatsCounted(t, "after a sweep")
}

// TestMigrationToV3 opens a schema 2 database (in the KeyPackage layout of
// schema 2 and 3), whose expiry index has available KeyPackages only: the migration adds the claimed and consumed
// ones (the checker run at cleanup proves the index complete), and the
// sweeper then lapses those past their not_after.
func TestMigrationToV3(t *testing.T) {
	e := newTestDB(t, workloadOptions)
	e.workload(t, 5, 200, nil)
	e.publishN(t, bob, "ipad", 1, 2)
	claimed := e.claimOne(t, alice, bob, "ipad", 1)
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	removed := 0
	err = bdb.Update(func(tx *bolt.Tx) error {
		if err := toSchema3(tx); err != nil {
			return err
		}
		err := tx.Bucket(bucketKeyPackagesV3).ForEach(func(k, v []byte) error {
			var r kpRecord
			if err := decode(v, &r); err != nil || r.State == kpd.StateAvailable || r.Lapsed {
				return err
			}
			removed++
			return tx.Bucket(bucketExpiry).Delete(index.TimeRef(r.NotAfter.time(), k))
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, index.Uint64(2))
	})
	bdb.Close()
	if err != nil || removed == 0 {
		t.Fatalf("downgrade to schema 2: %v, %d expiry entries removed", err, removed)
	}
	o := &Options{Clock: e.clock.Now}
	workloadOptions(o)
	if e.DB, err = Open(e.path, o); err != nil {
		t.Fatal(err)
	}
	if !e.inExpiry(t, claimed.Ref) {
		t.Fatal("a claimed KeyPackage is not in the expiry index after the migration")
	}
	e.clock.Advance(30 * 24 * time.Hour)
	e.sweep(t)
	e.wantStatsCounted(t, "after a sweep")
}

// TestMigrationOfASchema1File opens testdata/schema1.bolt, written by kpd
// before schema 2 (see testdata/README.md).
func TestMigrationOfASchema1File(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "schema1.bolt"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kpd.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e := verified(t, openTestFile(t, path))
	pools := make([]int64, len(kpd.PoolSizeBounds)+1)
	pools[3] = 2 // phone (3 available) and tablet (3)
	want := kpd.Stats{
		Suites: []kpd.SuiteStats{
			{CipherSuite: 1, Available: 3, Claimed: 1, Consumed: 1, LastResort: 1},
			{CipherSuite: 2, Available: 3},
		},
		Devices:    2,
		Deliveries: map[kpd.DeliveryState]int64{kpd.DeliveryPending: 1, kpd.DeliveryAcked: 1, kpd.DeliveryRejected: 0, kpd.DeliveryExpired: 0},
		Welcomes:   3,
		PoolSizes:  pools,
	}
	if got := e.wantStatsCounted(t, "after migration"); !reflect.DeepEqual(got, want) {
		t.Fatalf("stats after migration\n%+v\nwant\n%+v", got, want)
	}
	// Every record from before is due 40 days later; the Welcome whose
	// device was deleted, and the acked one with its delivery, go too.
	e.clock.Advance(40 * 24 * time.Hour)
	e.wantSweep(t, SweepStats{ExpiredKeyPackages: 7, ClaimsPurged: 1, ConsumedPurged: 1, DeliveriesExpired: 1,
		DeliveriesPurged: 1, WelcomesPurged: 2})
	e.wantStatsCounted(t, "after the sweep")
}

// TestStatsRecountWhenBoundsChange: counters kept with other pool-size
// bounds are counted again at open.
func TestStatsRecountWhenBoundsChange(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 3)
	e.publishN(t, bob, "tablet", 1, 30)
	want := e.wantStatsCounted(t, "before")
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		return editRecord(tx, bucketMeta, keyStats, func(s *statsRecord) { s.Bounds, s.Pools = []int{10}, []int64{1, 1} })
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	if vs, err := VerifyFile(e.path, time.Second); err != nil || len(vs) != 0 {
		t.Fatalf("verify with other bounds: %v, %v", vs, err)
	}
	if e.DB, err = Open(e.path, &Options{Clock: e.clock.Now}); err != nil {
		t.Fatal(err)
	}
	if got := e.stats(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("stats after reopen\n%+v\nwant\n%+v", got, want)
	}
}

// TestStatsOfACommitWithAFailedOperation: the counters are merged once per
// commit, from the operations of that commit. An operation that changes
// counters and then fails rolls its commit back; the others commit again
// without it, and the counters count only what they stored.
func TestStatsOfACommitWithAFailedOperation(t *testing.T) {
	e := newTestDB(t)
	started, release := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- e.write(e.ctx, func(*txn) error { close(started); <-release; return nil })
	}()
	<-started
	const publishers = 4
	errs := make(chan error, publishers+1)
	for i := range publishers {
		go func() {
			_, _, err := e.Publish(e.ctx, "did:plc:stats", fmt.Sprintf("dev%d", i), []kpd.KeyPackage{e.newKP(1), e.newKP(1)})
			errs <- err
		}()
	}
	for len(e.commit.queue) < publishers {
		runtime.Gosched()
	}
	// Queued last, so it fails after the publishes ran in the first try.
	boom := errors.New("boom")
	go func() {
		errs <- e.write(e.ctx, func(t *txn) error {
			dev := &deviceRecord{CreatedAt: *t.nowStamp()}
			dev.adjust(1, 3, 0)
			if err := t.saveDevice("did:plc:failing", "dev", dev); err != nil {
				return err
			}
			return boom
		})
	}()
	for len(e.commit.queue) < publishers+1 {
		runtime.Gosched()
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	failed := 0
	for range publishers + 1 {
		switch err := <-errs; {
		case errors.Is(err, boom):
			failed++
		case err != nil:
			t.Fatal(err)
		}
	}
	if failed != 1 {
		t.Fatalf("%d operations failed, want 1", failed)
	}
	got := e.stats(t)
	if got.Devices != publishers || len(got.Suites) != 1 || got.Suites[0].Available != 2*publishers {
		t.Errorf("stats %+v, want %d devices with %d available KeyPackages", got, publishers, 2*publishers)
	}
	if want := e.countStats(t); !reflect.DeepEqual(got, want) {
		t.Errorf("stats %+v, records say %+v", got, want)
	}
}
