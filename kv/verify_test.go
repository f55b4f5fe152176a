package kv

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// scenario is a database holding a KeyPackage in every state, a last
// resort, an acked and a pending delivery.
type scenario struct {
	*env
	available, claimed, consumed, lastResort kpd.Ref
	pendingWelcome                           string
}

func newScenario(t *testing.T) *scenario {
	t.Helper()
	e := openTestDB(t)
	s := &scenario{env: e}
	refs := e.publishN(t, bob, "phone", 1, 3)
	lr := e.newLastResort(1)
	e.publish(t, bob, "phone", lr)
	s.available, s.lastResort = refs[2], lr.Ref
	s.claimed = e.claimOne(t, alice, bob, "phone", 1).Ref
	s.consumed = e.claimOne(t, alice, bob, "phone", 1).Ref
	w := e.post(t, alice, "c", 1, s.consumed)
	if _, err := e.Ack(e.ctx, bob, "phone", w.WelcomeID); err != nil {
		t.Fatal(err)
	}
	s.pendingWelcome = e.post(t, alice, "c", 1, s.claimed).WelcomeID
	if vs, err := e.Verify(e.ctx); err != nil || len(vs) != 0 {
		t.Fatalf("the scenario itself fails verification: %v %v", vs, err)
	}
	return s
}

// expand replaces {available}, {claimed}, {consumed}, {lastResort} and
// {welcome} in text with the scenario's values (refs in hex).
func (s *scenario) expand(text string) string {
	return strings.NewReplacer("{available}", string(s.available), "{claimed}", string(s.claimed),
		"{consumed}", string(s.consumed), "{lastResort}", string(s.lastResort), "{welcome}", s.pendingWelcome).Replace(text)
}

func (s *scenario) raw(r kpd.Ref) []byte {
	b, err := r.Bytes()
	if err != nil {
		panic(err)
	}
	return b
}

// editRecord rewrites the record at key of a bucket with edit.
func editRecord[T any](tx *bolt.Tx, bucket, key []byte, edit func(*T)) error {
	var rec T
	if err := decode(tx.Bucket(bucket).Get(key), &rec); err != nil {
		return err
	}
	edit(&rec)
	b, err := encode(&rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, b)
}

func (s *scenario) editKP(tx *bolt.Tx, ref kpd.Ref, edit func(*kpRecord)) error {
	return editRecord(tx, bucketKPs, s.key(tx, ref), edit)
}

// key returns the kps key of ref, as the refs index has it.
func (s *scenario) key(tx *bolt.Tx, ref kpd.Ref) []byte {
	return bytes.Clone(tx.Bucket(bucketRefs).Get(s.raw(ref)))
}

type expectation struct {
	invariant int
	text      string // with {placeholders}, see expand
}

// TestVerifyFindsViolations damages a sound database directly through bbolt
// and checks that Verify reports each kind of damage.
func TestVerifyFindsViolations(t *testing.T) {
	phone := index.Device(bob, "phone")
	cases := []struct {
		name   string
		damage func(s *scenario, tx *bolt.Tx) error
		want   []expectation
	}{
		{"available counter off", func(s *scenario, tx *bolt.Tx) error {
			return editRecord(tx, bucketDevices, phone, func(d *deviceRecord) { d.adjust(1, 1, 0) })
		}, []expectation{{3, "devices/" + bob + "/phone: suite 1 counters available=2 claimed=1, records say 1 and 1"}}},
		{"pending counter off", func(s *scenario, tx *bolt.Tx) error {
			return editRecord(tx, bucketDevices, phone, func(d *deviceRecord) { d.Pending = 0 })
		}, []expectation{{3, "pending welcomes counter 0, deliveries say 1"}}},
		{"refs entry lost", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketRefs).Delete(s.raw(s.available))
		}, []expectation{{1, "(ref {available}): available KeyPackage missing from index refs (refs/{available})"}}},
		{"refs entry names another KeyPackage", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketRefs).Put(s.raw(s.available), s.key(tx, s.claimed))
		}, []expectation{{1, "refs/{available}: holds kps/" + bob + "/phone/1/"}}},
		{"dangling refs entry", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketRefs).Put([]byte{0xde, 0xad}, s.key(tx, s.available))
		}, []expectation{{1, "refs/dead: names KeyPackage dead, which does not exist"}}},
		{"record moved", func(s *scenario, tx *bolt.Tx) error {
			key := s.key(tx, s.available)
			v := bytes.Clone(tx.Bucket(bucketKPs).Get(key))
			if err := tx.Bucket(bucketKPs).Delete(key); err != nil {
				return err
			}
			return tx.Bucket(bucketKPs).Put(index.KeyPackage(bob, "phone", 2, 1), v)
		}, []expectation{
			{1, "kps/" + bob + "/phone/2/1 (ref {available}): its fields make the key kps/" + bob + "/phone/1/"},
			{1, "refs/{available}: holds kps/" + bob + "/phone/1/"},
		}},
		{"two records, one ref", func(s *scenario, tx *bolt.Tx) error {
			rec := s.record(t, s.available)
			rec.Seq = 1 << 20
			b, err := encode(rec)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketKPs).SetSequence(1 << 20); err != nil {
				return err
			}
			return tx.Bucket(bucketKPs).Put(rec.key(), b)
		}, []expectation{{1, "(ref {available}): the ref of another KeyPackage, kps/" + bob + "/phone/1/"}}},
		{"seq beyond the publish sequence", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketKPs).SetSequence(1)
		}, []expectation{{1, "(ref {available}): seq 3 is beyond the publish sequence 1"}}},
		{"available KeyPackage below the head", func(s *scenario, tx *bolt.Tx) error {
			seq := s.record(t, s.available).Seq
			return editRecord(tx, bucketDevices, phone, func(d *deviceRecord) { d.advanceHead(1, seq+1) })
		}, []expectation{{1, "(ref {available}): available, but below the head 4 of its pool"}}},
		{"head beyond the publish sequence", func(s *scenario, tx *bolt.Tx) error {
			return editRecord(tx, bucketDevices, phone, func(d *deviceRecord) { d.advanceHead(1, 99) })
		}, []expectation{{1, "devices/" + bob + "/phone: suite 1 pool head 99 is beyond the next publish sequence 5"}}},
		{"schema 3 bucket left", func(s *scenario, tx *bolt.Tx) error {
			_, err := tx.CreateBucket(bucketPoolV3)
			return err
		}, []expectation{{0, "pool/: bucket of schema 3"}}},
		{"dangling expiry entry", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketExpiry).Put(index.TimeRef(t0, []byte{0xde, 0xad}), nil)
		}, []expectation{{1, "names KeyPackage dead, which does not exist"}}},
		{"index entry of another state", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketClaimed).Put(index.TimeRef(t0, s.raw(s.available)), nil)
		}, []expectation{{1, "does not match KeyPackage {available} (available of " + bob + ` "phone")`}}},
		{"claimed without claimer", func(s *scenario, tx *bolt.Tx) error {
			return s.editKP(tx, s.claimed, func(r *kpRecord) { r.Claimer = "" })
		}, []expectation{{2, "(ref {claimed}): claimed without claimer and claim time"}}},
		{"claimed again: back to available", func(s *scenario, tx *bolt.Tx) error {
			return s.editKP(tx, s.claimed, func(r *kpRecord) { r.State = kpd.StateAvailable })
		}, []expectation{
			{1, "(ref {claimed}): available, but below the head 3 of its pool"},
			{1, "does not match KeyPackage {claimed} (available of "},
			{1, "available, yet routed by welcome {welcome}"},
			{3, "suite 1 counters available=1 claimed=1, records say 2 and 0"},
			{4, "names KeyPackage {claimed}, which is available for welcome"},
		}},
		{"pending queue's sequence behind its keys", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketPending).SetSequence(0)
		}, []expectation{{4, "is beyond the queue's sequence 0: a new delivery may reuse its key"}}},
		{"acked, yet its KeyPackage not consumed", func(s *scenario, tx *bolt.Tx) error {
			return s.editKP(tx, s.consumed, func(r *kpRecord) { r.State, r.ConsumedAt = kpd.StateClaimed, nil })
		}, []expectation{{4, "acked, but names KeyPackage {consumed}, which is claimed for welcome"}}},
		{"available and spent", func(s *scenario, tx *bolt.Tx) error {
			return s.editKP(tx, s.available, func(r *kpRecord) { r.Spent = true })
		}, []expectation{{1, "(ref {available}): spent, but available"}}},
		{"available and lapsed", func(s *scenario, tx *bolt.Tx) error {
			if err := tx.Bucket(bucketExpiry).Delete(index.TimeRef(s.record(t, s.available).NotAfter.time(), s.raw(s.available))); err != nil {
				return err
			}
			return s.editKP(tx, s.available, func(r *kpRecord) { r.Lapsed = true })
		}, []expectation{{1, "(ref {available}): lapsed, but available"}}},
		{"claimed KeyPackage missing from expiry", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketExpiry).Delete(index.TimeRef(s.record(t, s.claimed).NotAfter.time(), s.raw(s.claimed)))
		}, []expectation{{1, "(ref {claimed}): claimed KeyPackage missing from index expiry"}}},
		{"last resort claimed", func(s *scenario, tx *bolt.Tx) error {
			return s.editKP(tx, s.lastResort, func(r *kpRecord) { r.State = kpd.StateClaimed })
		}, []expectation{{1, "last resort in state claimed"}, {2, "claimed without claimer"}}},
		{"welcome lost", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketWelcomes).Delete([]byte(s.pendingWelcome))
		}, []expectation{{4, "deliveries/" + bob + "/phone/{welcome}: welcome {welcome} does not exist"}}},
		{"delivery lost", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketDeliveries).Delete(index.Delivery(bob, "phone", s.pendingWelcome))
		}, []expectation{
			{4, "welcomes/{welcome}: recipient " + bob + ` "phone" has no delivery`},
			{4, "queues welcome {welcome}, which has no pending delivery"},
			{3, "pending welcomes counter 1, deliveries say 0"},
			{3, "(ref {claimed}): pending deliveries counter 1, deliveries say 0"},
		}},
		{"device lost", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketDevices).Delete(phone)
		}, []expectation{
			{1, "(ref {available}): belongs to " + bob + ` device "phone", which does not exist`},
			{4, "device does not exist"},
		}},
		{"garbage record and key", func(s *scenario, tx *bolt.Tx) error {
			if err := tx.Bucket(bucketKPs).Put([]byte{1}, []byte{0xff, 0x00}); err != nil {
				return err
			}
			if err := tx.Bucket(bucketKPs).Put(index.KeyPackage(bob, "phone", 1, 0), []byte{0xff, 0x00}); err != nil {
				return err
			}
			return tx.Bucket(bucketPending).Put([]byte{0x05, 'a'}, []byte("x"))
		}, []expectation{{0, "kps/01: KeyPackage key"}, {0, "kps/" + bob + "/phone/1/0: decode"}, {0, "pending/0561: pending key"}}},
		{"global counter off", func(s *scenario, tx *bolt.Tx) error {
			return editRecord(tx, bucketMeta, keyStats, func(r *statsRecord) {
				c := r.Suites[1]
				c.Available++
				r.Suites[1] = c
				r.Deliveries[kpd.DeliveryAcked] = 0
			})
		}, []expectation{
			{3, "meta/stats: suite 1 available 2, records say 1"},
			{3, "meta/stats: acked deliveries 0, records say 1"},
		}},
		{"pool sizes and events off", func(s *scenario, tx *bolt.Tx) error {
			return editRecord(tx, bucketMeta, keyStats, func(r *statsRecord) { r.Pools[0]++; r.Events = 4 })
		}, []expectation{{3, "meta/stats: pool sizes [1 "}, {3, "outbox events 4, records say 0"}}},
		{"global counters lost", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Delete(keyStats)
		}, []expectation{{3, "meta/stats: the store-wide counters"}}},
		{"outbox event without its count", func(s *scenario, tx *bolt.Tx) error {
			b, err := encode(&eventRecord{Type: kpd.EventWelcomePending})
			if err != nil {
				return err
			}
			return tx.Bucket(bucketOutbox).Put(index.Uint64(7), b)
		}, []expectation{{3, "outbox events 0, records say 1"}, {0, "seq 7 is beyond the outbox's sequence 0: a new event may overwrite it"}}},
		{"delivery time index entry lost", func(s *scenario, tx *bolt.Tx) error {
			c := tx.Bucket(bucketSince).Cursor()
			k, _ := c.First()
			return tx.Bucket(bucketSince).Delete(k)
		}, []expectation{{4, "deliveries/" + bob + "/phone/{welcome}: pending delivery missing from index pending_since"}}},
		{"pending queue entry lost", func(s *scenario, tx *bolt.Tx) error {
			c := tx.Bucket(bucketPending).Cursor()
			k, _ := c.First()
			return tx.Bucket(bucketPending).Delete(k)
		}, []expectation{{4, "deliveries/" + bob + "/phone/{welcome}: pending delivery missing from index pending (pending/" + bob + "/phone/"}}},
		{"orphaned welcome not indexed", func(s *scenario, tx *bolt.Tx) error {
			return editRecord(tx, bucketWelcomes, []byte(s.pendingWelcome), func(w *welcomeRecord) {
				w.Recipients[0].Gone = &deliveryStatus{State: kpd.DeliveryExpired, UpdatedAt: stampOf(t0)}
			})
		}, []expectation{{4, "welcomes/{welcome}: Welcome without deliveries missing from index orphan_welcomes"}}},
		{"finished delivery indexed as pending", func(s *scenario, tx *bolt.Tx) error {
			c := tx.Bucket(bucketFinished).Cursor()
			k, _ := c.First()
			return tx.Bucket(bucketSince).Put(k, nil)
		}, []expectation{{4, "names no pending delivery with this time"}}},
		{"live welcome indexed as orphaned", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketOrphans).Put(index.TimeRef(t0, []byte(s.pendingWelcome)), nil)
		}, []expectation{{4, "names welcome {welcome}, which is not a Welcome without deliveries"}}},
		{"schema version lost", func(s *scenario, tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Delete(keySchemaVersion)
		}, []expectation{{0, "meta/schema_version"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newScenario(t)
			if err := s.bolt.Update(func(tx *bolt.Tx) error { return c.damage(s, tx) }); err != nil {
				t.Fatalf("damage: %v", err)
			}
			vs, err := s.Verify(s.ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range c.want {
				text := s.expand(w.text)
				found := false
				for _, v := range vs {
					found = found || v.Invariant == w.invariant && strings.Contains(v.String(), text)
				}
				if !found {
					t.Errorf("no invariant %d violation containing %q", w.invariant, text)
				}
			}
			if t.Failed() {
				for _, v := range vs {
					t.Logf("reported: %s", v)
				}
			}
		})
	}
}

func TestViolationString(t *testing.T) {
	v := Violation{Invariant: 3, Key: "devices/x", Msg: "off by one"}
	if got := v.String(); got != "invariant 3: devices/x: off by one" {
		t.Errorf("String() = %q", got)
	}
	v.Invariant = 0
	if got := v.String(); got != "malformed: devices/x: off by one" {
		t.Errorf("String() = %q", got)
	}
}

// TestVerifyRunsBoltCheck: a file whose B+tree is intact but whose
// freelist lost its pages (so those pages are neither reachable nor free)
// fails bbolt's structural check, which Verify reports.
func TestVerifyRunsBoltCheck(t *testing.T) {
	e := openTestDB(t)
	for range 5 {
		e.publishN(t, bob, "phone", 1, 20)
		e.claimOne(t, alice, bob, "phone", 1)
	}
	path := e.path
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The meta page with the higher transaction id is the current one; its
	// freelist page's header has the count of free page ids at offset 10.
	// Meta: page header (16 bytes), then magic, version, page size, flags
	// (4 bytes each), root bucket (16), freelist page id, high water mark,
	// transaction id (8 each).
	var freelist, pageSize, txid uint64
	for meta := range 2 {
		buf := make([]byte, 80)
		if _, err := f.ReadAt(buf, int64(meta)*4096); err != nil {
			t.Fatal(err)
		}
		if tx := binary.LittleEndian.Uint64(buf[64:]); tx >= txid {
			txid, freelist, pageSize = tx, binary.LittleEndian.Uint64(buf[48:]), uint64(binary.LittleEndian.Uint32(buf[24:]))
		}
	}
	count := make([]byte, 2)
	if _, err := f.ReadAt(count, int64(freelist*pageSize+10)); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint16(count) == 0 {
		t.Fatal("no free pages to lose")
	}
	if _, err := f.WriteAt([]byte{0, 0}, int64(freelist*pageSize+10)); err != nil {
		t.Fatal(err)
	}
	vs, err := VerifyFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range vs {
		found = found || v.Invariant == 0 && v.Key == "bbolt" && strings.Contains(v.Msg, "unreachable unfreed")
	}
	if !found {
		t.Fatalf("violations %v, want bbolt's unreachable unfreed pages", vs)
	}
}

// TestMisdirectedRefIsAnError: a refs entry that names another
// KeyPackage's record fails the operations that look the ref up, rather
// than letting them change that other KeyPackage.
func TestMisdirectedRefIsAnError(t *testing.T) {
	s := newScenario(t)
	err := s.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRefs).Put(s.raw(s.available), s.key(tx, s.lastResort))
	})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.DeleteKeyPackages(s.ctx, bob, "phone", []kpd.Ref{s.available})
	if kpd.ErrorCode(err) != kpd.CodeInternal || !strings.Contains(err.Error(), "which is KeyPackage "+string(s.lastResort)) {
		t.Fatalf("delete through a misdirected ref: %v, want an internal error naming the other KeyPackage", err)
	}
	if inv, _ := s.inventory(t, bob, "phone"); suiteOf(inv, 1).LastResort == nil {
		t.Fatal("the last resort that the misdirected ref named is gone")
	}
}
