package kv

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// txn is one store operation's view of a bbolt transaction, with the time
// the operation happens at, and what the operation changes besides its
// records: the store-wide counters (delta, merged by flush), Observer calls
// and WaitWelcome wake-ups for after the commit (notes, wake: device keys).
type txn struct {
	tx    *bolt.Tx
	now   time.Time
	opts  *Options
	delta statsRecord
	notes []func(Observer)
	wake  []string
}

func (t *txn) bucket(name []byte) *bolt.Bucket { return t.tx.Bucket(name) }

// nowStamp returns the operation's time for a record's optional time field.
func (t *txn) nowStamp() *stamp {
	s := stampOf(t.now)
	return &s
}

// get decodes the record at key into v and reports whether there was one.
func (t *txn) get(bucket, key []byte, v any) (bool, error) {
	b := t.bucket(bucket).Get(key)
	if b == nil {
		return false, nil
	}
	if err := decode(b, v); err != nil {
		return false, fmt.Errorf("%s %x: %w", bucket, key, err)
	}
	return true, nil
}

// put stores the record v at key.
func (t *txn) put(bucket, key []byte, v any) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	return t.bucket(bucket).Put(key, b)
}

// has reports whether key is in the bucket and returns its value (a copy).
// It uses a cursor because bbolt does not tell an empty value from none.
func (t *txn) has(bucket, key []byte) ([]byte, bool) {
	k, v := t.bucket(bucket).Cursor().Seek(key)
	if !bytes.Equal(k, key) {
		return nil, false
	}
	return bytes.Clone(v), true
}

// scan calls fn with a copy of each key and value under prefix, in order,
// until fn returns an error. Copies make fn free to write.
func (t *txn) scan(bucket, prefix []byte, fn func(k, v []byte) error) error {
	var keys, vals [][]byte
	c := t.bucket(bucket).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		keys, vals = append(keys, bytes.Clone(k)), append(vals, bytes.Clone(v))
	}
	for i := range keys {
		if err := fn(keys[i], vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// keyPackage returns the record of ref, or nil. It finds the record's key
// in the refs index.
func (t *txn) keyPackage(ref []byte) (*kpRecord, error) {
	key := t.bucket(bucketRefs).Get(ref)
	if key == nil {
		return nil, nil
	}
	var r kpRecord
	ok, err := t.get(bucketKPs, key, &r)
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, fmt.Errorf("%s names %s, which does not exist", describeKey(bucketRefs, ref), describeKey(bucketKPs, key))
	case !bytes.Equal(r.Ref, ref):
		return nil, fmt.Errorf("%s names %s, which is KeyPackage %x", describeKey(bucketRefs, ref), describeKey(bucketKPs, key), r.Ref)
	}
	return &r, nil
}

// mustKeyPackage returns the record of a ref that an index or a delivery
// names; its absence is corruption, reported as an internal error.
func (t *txn) mustKeyPackage(ref []byte, from string) (*kpRecord, error) {
	r, err := t.keyPackage(ref)
	if err == nil && r == nil {
		err = fmt.Errorf("%s names KeyPackage %x, which does not exist", from, ref)
	}
	return r, err
}

// indexEntry is one key (with its value) of a secondary index.
type indexEntry struct {
	bucket, key, value []byte
}

func (e indexEntry) equal(o indexEntry) bool {
	return bytes.Equal(e.bucket, o.bucket) && bytes.Equal(e.key, o.key) && bytes.Equal(e.value, o.value)
}

// indexEntries returns exactly the index entries that the KeyPackage
// record r, stored at key, belongs to (SPEC invariant 1): every KeyPackage
// is in the refs index (its ref names its key) and in the expiry index
// until it has lapsed; an available last resort that is not retired is in
// its last-resort slot; a claimed or consumed one in the index of its
// claim or consumption time. The FIFO pool is not an index: it is the
// available regular records themselves, in key order, from the device's
// Head on (suiteCounts).
//
// Claimed and consumed KeyPackages stay in the expiry index (until the
// sweeper passes their not_after and marks them lapsed) so that a claim
// and an ack leave it alone: deleting a random key of a large index costs
// a claim one more scattered page in its commit, and the commit's page
// writes are what limits claim throughput (docs/BENCHMARKS.md). The refs
// entry is the same in every state, so state changes never touch it.
func indexEntries(key []byte, r *kpRecord) []indexEntry {
	e := []indexEntry{{bucketRefs, r.Ref, key}}
	if !r.Lapsed {
		e = append(e, indexEntry{bucketExpiry, index.TimeRef(r.NotAfter.time(), r.Ref), nil})
	}
	switch r.State {
	case kpd.StateAvailable:
		if r.LastResort && !r.Retired {
			e = append(e, indexEntry{bucketLastResort, index.DeviceSuite(r.DID, r.Device, r.Suite), r.Ref})
		}
	case kpd.StateClaimed:
		if !r.Spent {
			e = append(e, indexEntry{bucketClaimed, index.TimeRef(optTime(r.ClaimedAt), r.Ref), nil})
		}
	case kpd.StateConsumed:
		if !r.Spent {
			e = append(e, indexEntry{bucketConsumed, index.TimeRef(optTime(r.ConsumedAt), r.Ref), nil})
		}
	}
	return e
}

// counts returns what a record adds to its device's counters of its suite:
// regular KeyPackages only, available or claimed.
func counts(r *kpRecord) (available, claimed int) {
	switch {
	case r.LastResort, r.Spent:
		return 0, 0
	case r.State == kpd.StateAvailable:
		return 1, 0
	case r.State == kpd.StateClaimed:
		return 0, 1
	}
	return 0, 0
}

// transition replaces the record of a KeyPackage, old, by next (old nil:
// a new KeyPackage; next nil: a deletion), at the key they share. It moves
// the index entries, adjusts the counters of dev, the device both records
// belong to, which the caller stores, and the store-wide counters. old and
// next must be distinct values.
func (t *txn) transition(old, next *kpRecord, dev *deviceRecord) error {
	var key []byte
	var before, after []indexEntry
	if old != nil {
		key = old.key()
		before = indexEntries(key, old)
		a, c := counts(old)
		dev.adjust(old.Suite, -a, -c)
	}
	if next != nil {
		if k := next.key(); key == nil {
			key = k
		} else if !bytes.Equal(k, key) {
			return fmt.Errorf("KeyPackage %x would move from %s to %s", next.Ref, describeKey(bucketKPs, key), describeKey(bucketKPs, k))
		}
		after = indexEntries(key, next)
		a, c := counts(next)
		dev.adjust(next.Suite, a, c)
	}
	t.delta.addKP(old, -1)
	t.delta.addKP(next, 1)
	return save(t, bucketKPs, key, before, after, next)
}

// save moves a record's index entries from before to after and stores
// next at key, or deletes the key when next is nil.
func save[T any](t *txn, bucket, key []byte, before, after []indexEntry, next *T) error {
	if err := t.moveEntries(before, after); err != nil {
		return err
	}
	if next == nil {
		return t.bucket(bucket).Delete(key)
	}
	return t.put(bucket, key, next)
}

// moveEntries deletes the entries of before that after lacks and puts those
// of after that before lacks.
func (t *txn) moveEntries(before, after []indexEntry) error {
	for _, e := range before {
		if !slices.ContainsFunc(after, e.equal) {
			if err := t.bucket(e.bucket).Delete(e.key); err != nil {
				return err
			}
		}
	}
	for _, e := range after {
		if !slices.ContainsFunc(before, e.equal) {
			if err := t.bucket(e.bucket).Put(e.key, e.value); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliveryEntries returns exactly the index entries of the delivery d of
// Welcome id to a device: a pending one is in its device's queue and in the
// index of pending deliveries by creation time (which the sweeper expires
// them by); a finished one in the index of finished deliveries by the time
// it finished (which the sweeper purges them by).
func deliveryEntries(did, device, id string, d *deliveryRecord) []indexEntry {
	if d == nil {
		return nil
	}
	key := index.Delivery(did, device, id)
	if d.Status.State == kpd.DeliveryPending {
		return []indexEntry{
			{bucketPending, index.Pending(did, device, d.Seq), []byte(id)},
			{bucketSince, index.TimeRef(d.CreatedAt.time(), key), nil},
		}
	}
	return []indexEntry{{bucketFinished, index.TimeRef(d.Status.UpdatedAt.time(), key), nil}}
}

func isPending(d *deliveryRecord) bool { return d != nil && d.Status.State == kpd.DeliveryPending }

// saveDelivery replaces the delivery of Welcome id to a device, old, by
// next (old nil: a new delivery; next nil: a deletion), moving its index
// entries, the device's pending counter (dev, which the caller stores;
// needed only when the delivery starts or stops being pending) and the
// store-wide counters. A delivery that stops being pending is reported to
// the Observer as finished with next's state, or expired when deleted.
func (t *txn) saveDelivery(did, device, id string, old, next *deliveryRecord, dev *deviceRecord) error {
	if was, is := isPending(old), isPending(next); was != is {
		if dev == nil {
			return fmt.Errorf("delivery of welcome %s to %s %s changes its pending state without the device", id, did, device)
		}
		if is {
			dev.Pending++
		} else {
			dev.Pending--
			outcome := kpd.DeliveryExpired
			if next != nil {
				outcome = next.Status.State
			}
			t.note(func(o Observer) { o.DeliveryFinished(outcome) })
		}
	}
	t.delta.addDelivery(old, -1)
	t.delta.addDelivery(next, 1)
	return save(t, bucketDeliveries, index.Delivery(did, device, id),
		deliveryEntries(did, device, id, old), deliveryEntries(did, device, id, next), next)
}

// welcomeEntries returns exactly the index entries of a stored Welcome: one
// none of whose recipients has a delivery any more (their devices were
// deleted or their deliveries purged) is in the index of orphaned Welcomes
// by the time its last delivery ended, which the sweeper purges it by.
func welcomeEntries(id string, w *welcomeRecord) []indexEntry {
	if w == nil || len(w.Recipients) == 0 {
		return nil
	}
	var last time.Time
	for _, r := range w.Recipients {
		if r.Gone == nil {
			return nil
		}
		if at := r.Gone.UpdatedAt.time(); at.After(last) {
			last = at
		}
	}
	return []indexEntry{{bucketOrphans, index.TimeRef(last, []byte(id)), nil}}
}

// saveWelcome replaces the Welcome id, old, by next (nil: none), moving its
// index entries and the store-wide counters. old and next must not share
// their Recipients.
func (t *txn) saveWelcome(id string, old, next *welcomeRecord) error {
	t.delta.addWelcome(old, -1)
	t.delta.addWelcome(next, 1)
	return save(t, bucketWelcomes, []byte(id), welcomeEntries(id, old), welcomeEntries(id, next), next)
}

// recipientGone records in Welcome id that the delivery to a device is
// gone (deleted with its device, or purged), with its final status.
func (t *txn) recipientGone(id, did, device string, final deliveryStatus) error {
	old, next, err := t.welcomeToEdit(id)
	if err != nil || old == nil {
		return err
	}
	next.markGone(did, device, final)
	return t.saveWelcome(id, old, next)
}

// welcomeToEdit returns the stored Welcome id and a copy to change whose
// Recipients it does not share, or nils if there is none.
func (t *txn) welcomeToEdit(id string) (old, next *welcomeRecord, err error) {
	var w welcomeRecord
	if ok, err := t.get(bucketWelcomes, []byte(id), &w); err != nil || !ok {
		return nil, nil, err
	}
	n := w
	n.Recipients = slices.Clone(w.Recipients)
	return &w, &n, nil
}

// markGone records that the delivery to a device is gone, with its final
// status.
func (w *welcomeRecord) markGone(did, device string, final deliveryStatus) {
	for i := range w.Recipients {
		if e := &w.Recipients[i]; e.DID == did && e.Device == device && e.Gone == nil {
			e.Gone = &final
		}
	}
}

// removeAvailable takes an available KeyPackage out of service: it is
// deleted, unless it is a last resort that pending deliveries name, which
// is retired instead (no longer served, deleted when its last pending
// delivery finishes), so that invariant 4 keeps holding.
func (t *txn) removeAvailable(r *kpRecord, dev *deviceRecord) error {
	if r.LastResort && r.Pending > 0 {
		n := *r
		n.Retired = true
		return t.transition(r, &n, dev)
	}
	return t.transition(r, nil, dev)
}

// device returns the record of a device, or nil.
func (t *txn) device(did, device string) (*deviceRecord, error) {
	var d deviceRecord
	ok, err := t.get(bucketDevices, index.Device(did, device), &d)
	if !ok || err != nil {
		return nil, err
	}
	return &d, nil
}

// ownDevice returns the record of one of the caller's devices; NotFound if
// it does not exist.
func (t *txn) ownDevice(did, device string) (*deviceRecord, error) {
	d, err := t.device(did, device)
	if err == nil && d == nil {
		err = kpd.Errorf(kpd.CodeNotFound, "no device %q", device)
	}
	return d, err
}

// saveDevice replaces the stored record of a device by next (nil: deletes
// it). The store-wide counters move from what the stored record contributed
// to what next contributes; an available count that next takes across the
// low watermark or to zero is reported in the outbox (not for a deletion:
// a deleted device needs no KeyPackages).
func (t *txn) saveDevice(did, device string, next *deviceRecord) error {
	key := index.Device(did, device)
	var stored deviceRecord
	had, err := t.get(bucketDevices, key, &stored)
	if err != nil {
		return err
	}
	var old *deviceRecord
	if had {
		old = &stored
		t.delta.addDevice(old, -1)
	}
	if next == nil {
		return t.bucket(bucketDevices).Delete(key)
	}
	t.delta.addDevice(next, 1)
	if old != nil {
		if err := t.watermarkEvents(did, device, old, next); err != nil {
			return err
		}
	}
	return t.put(bucketDevices, key, next)
}

// touch records a state-changing request of the device's owner.
func (t *txn) touch(d *deviceRecord) { d.LastSeen = stampOf(t.now) }

// deviceNames returns the names of a DID's devices, sorted.
func (t *txn) deviceNames(did string) ([]string, error) {
	var names []string
	err := t.scan(bucketDevices, index.DID(did), func(k, _ []byte) error {
		_, device, err := index.DecodeDevice(k)
		names = append(names, device)
		return err
	})
	slices.Sort(names)
	return names, err
}

// deviceKeyPackages returns the records of every KeyPackage of a device
// (its key range of kps), in ref order.
func (t *txn) deviceKeyPackages(did, device string) ([]*kpRecord, error) {
	var out []*kpRecord
	prefix := index.Device(did, device)
	c := t.bucket(bucketKPs).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		r := new(kpRecord)
		if err := decode(v, r); err != nil {
			return nil, fmt.Errorf("%s: %w", describeKey(bucketKPs, k), err)
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *kpRecord) int { return bytes.Compare(a.Ref, b.Ref) })
	return out, nil
}

// lastResort returns the current last resort of a device and suite, or
// nil.
func (t *txn) lastResort(did, device string, suite uint16) (*kpRecord, error) {
	ref, ok := t.has(bucketLastResort, index.DeviceSuite(did, device, suite))
	if !ok {
		return nil, nil
	}
	return t.mustKeyPackage(ref, "last-resort slot")
}

// suites returns the device's inventory, one entry per suite it ever had a
// KeyPackage of, by suite id.
func (t *txn) suites(did, device string, d *deviceRecord) ([]kpd.SuiteInventory, error) {
	ids := make([]uint16, 0, len(d.Suites))
	for s := range d.Suites {
		ids = append(ids, s)
	}
	slices.Sort(ids)
	out := make([]kpd.SuiteInventory, 0, len(ids))
	for _, s := range ids {
		c := d.Suites[s]
		si := kpd.SuiteInventory{CipherSuite: s, Available: c.Available, Claimed: c.Claimed}
		lr, err := t.lastResort(did, device, s)
		if err != nil {
			return nil, err
		}
		// One whose lifetime has ended is no last resort any more
		// (claims pass it over), though the sweeper has yet to delete it.
		if lr != nil && t.now.Before(lr.NotAfter.time()) {
			si.LastResort = &kpd.LastResortInfo{Ref: kpd.RefOf(lr.Ref), NotAfter: lr.NotAfter.time(), Served: lr.Served}
		}
		out = append(out, si)
	}
	return out, nil
}

// inventory returns a device's inventory.
func (t *txn) inventory(did, device string, d *deviceRecord) (*kpd.Inventory, error) {
	s, err := t.suites(did, device, d)
	if err != nil {
		return nil, err
	}
	return &kpd.Inventory{Device: device, Suites: s, LowWatermark: t.opts.reportedLowWatermark()}, nil
}
