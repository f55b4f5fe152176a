package kv

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// Violation is one breach of a store invariant found by Verify.
type Violation struct {
	// Invariant is the number of the SPEC section 4 invariant broken, or
	// 0 when a key or record cannot be decoded at all.
	Invariant int
	// Key locates the offending entry: bucket/key, the key decoded.
	Key string
	// Msg says what is wrong.
	Msg string
}

// String renders v on one line.
func (v Violation) String() string {
	if v.Invariant == 0 {
		return fmt.Sprintf("malformed: %s: %s", v.Key, v.Msg)
	}
	return fmt.Sprintf("invariant %d: %s: %s", v.Invariant, v.Key, v.Msg)
}

// Verify checks the invariants of SPEC section 4 over the whole database, in
// one read transaction, and returns every violation it finds (none: nil):
//
//  1. each KeyPackage is in exactly one state and in exactly the indexes
//     that state implies (the refs index, naming its key; the expiry
//     index until it lapses; its last-resort slot when it is the current
//     last resort; the claimed or consumed index), every index entry
//     belongs to a KeyPackage in that state, its device exists, only
//     regular KeyPackages are ever claimed or consumed, and it is stored
//     at the key its DID, device, suite and seq make, a seq the publish
//     sequence has passed; an available regular one is in its pool: at or
//     above the Head of its device's suite, which is at most the next
//     publish sequence;
//  2. every claimed or consumed KeyPackage records its claimer and claim
//     time (a KeyPackage cannot be claimed twice: claiming needs the
//     available state, which nothing returns to);
//  3. each device's per-suite available and claimed counters, its pending
//     Welcome counter, each KeyPackage's pending-delivery counter and the
//     store-wide counters (meta/stats: by suite and state, devices,
//     Welcomes, deliveries by state, pool sizes, outbox events) equal the
//     records they count;
//  4. each delivery is in exactly the indexes its state implies (a pending
//     one in its device's queue and the index by creation time, a
//     finished one in the index by end time), belongs to a stored Welcome
//     that lists it, and, when pending, names KeyPackages of its device
//     that are claimed for that Welcome or are its last resorts; every
//     index entry of a delivery and every live recipient of a Welcome has
//     its delivery; a Welcome none of whose recipients has a delivery is
//     in the index of orphaned Welcomes, and only such Welcomes are.
//
// Invariant 5 (nothing acknowledged as stored is lost, even across a
// crash) is about history, not one snapshot: it cannot be checked here.
//
// First of all it runs bbolt's own consistency check of the file (every
// page reachable once or free, keys in order, page types and bounds),
// reported as malformed entries of key "bbolt".
func (db *DB) Verify(ctx context.Context) ([]Violation, error) {
	var out []Violation
	err := db.read(ctx, func(t *txn) error {
		v := &verifier{ctx: ctx, t: t, devices: map[string]*deviceCheck{}, kps: map[string]*kpCheck{},
			entries: map[string]bool{}}
		if err := v.run(); err != nil {
			return err
		}
		out = v.out
		return nil
	})
	return out, err
}

// VerifyFile opens the database at path read-only (waiting at most timeout
// for the lock: ErrInUse while a server has it open), verifies it and
// closes it.
func VerifyFile(path string, timeout time.Duration) ([]Violation, error) {
	db, err := Open(path, &Options{ReadOnly: true, OpenTimeout: timeout})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return db.Verify(context.Background())
}

// deviceCheck is a device as Verify found it, with what it counted.
type deviceCheck struct {
	rec     deviceRecord
	counted map[uint16]suiteCounts
	pending int
}

// kpCheck is what Verify remembers of a KeyPackage.
type kpCheck struct {
	where      string // its key and ref, for reports
	rec        kpRecord
	deliveries int // pending deliveries naming it
}

type verifier struct {
	ctx     context.Context
	t       *txn
	out     []Violation
	devices map[string]*deviceCheck // by index.Device key
	kps     map[string]*kpCheck     // by raw ref
	kpOrder []*kpCheck
	entries map[string]bool // index entries the records imply
	// stored are the store-wide counters (nil if unreadable), counted
	// what the records add up to.
	stored, counted *statsRecord
	seen            int
	// kpSeq is the publish sequence: the kps bucket's; pendingSeq and
	// outboxSeq those of the pending queue and the outbox.
	kpSeq, pendingSeq, outboxSeq uint64
}

func (v *verifier) report(invariant int, bucket, key []byte, format string, args ...any) {
	v.reportAt(invariant, describeKey(bucket, key), format, args...)
}

// reportAt reports a violation at a location already rendered.
func (v *verifier) reportAt(invariant int, where string, format string, args ...any) {
	v.out = append(v.out, Violation{Invariant: invariant, Key: where, Msg: fmt.Sprintf(format, args...)})
}

func (v *verifier) run() error {
	for err := range v.t.tx.Check() {
		v.out = append(v.out, Violation{Key: "bbolt", Msg: err.Error()})
	}
	if err := v.ctx.Err(); err != nil {
		return err
	}
	if _, err := readSchemaVersion(v.t.tx); err != nil {
		v.report(0, bucketMeta, keySchemaVersion, "%v", err)
	}
	if b := v.t.bucket(bucketKPs); b != nil {
		v.kpSeq = b.Sequence()
	}
	if b := v.t.bucket(bucketPending); b != nil {
		v.pendingSeq = b.Sequence()
	}
	if b := v.t.bucket(bucketOutbox); b != nil {
		v.outboxSeq = b.Sequence()
	}
	v.counted = &statsRecord{Bounds: kpd.PoolSizeBounds}
	if v.t.bucket(bucketMeta) != nil {
		if rec, err := v.t.stats(); err != nil {
			v.report(3, bucketMeta, keyStats, "%v", err)
		} else {
			v.stored, v.counted.Bounds = rec, rec.bounds()
		}
	}
	for _, step := range []struct {
		bucket []byte
		fn     func(k, val []byte) error
	}{
		{bucketDevices, v.device},
		{bucketKPs, v.keyPackage},
		{bucketRefs, v.checkIndex(bucketRefs)},
		{bucketLastResort, v.checkIndex(bucketLastResort)},
		{bucketExpiry, v.checkIndex(bucketExpiry)},
		{bucketClaimed, v.checkIndex(bucketClaimed)},
		{bucketConsumed, v.checkIndex(bucketConsumed)},
		{bucketDeliveries, v.delivery},
		{bucketPending, v.pendingEntry},
		{bucketSince, v.deliveryIndex(bucketSince, "pending")},
		{bucketFinished, v.deliveryIndex(bucketFinished, "finished")},
		{bucketWelcomes, v.welcome},
		{bucketOrphans, v.orphanEntry},
		{bucketOutbox, v.event},
		{bucketTokens, v.token},
	} {
		if err := v.each(step.bucket, step.fn); err != nil {
			return err
		}
	}
	for _, name := range schema3Buckets {
		if v.t.bucket(name) != nil {
			v.report(0, name, nil, "bucket of schema 3, which schema %d replaced", schemaVersion)
		}
	}
	v.counters()
	return nil
}

// each calls fn for every entry of a bucket (a missing bucket is a
// violation), checking for cancellation now and then.
func (v *verifier) each(bucket []byte, fn func(k, val []byte) error) error {
	b := v.t.bucket(bucket)
	if b == nil {
		v.report(0, bucket, nil, "bucket missing")
		return nil
	}
	c := b.Cursor()
	for k, val := c.First(); k != nil; k, val = c.Next() {
		if v.seen++; v.seen%4096 == 0 {
			if err := v.ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(k, val); err != nil {
			return err
		}
	}
	return nil
}

func entryKey(e indexEntry) string {
	return string(e.bucket) + "\x00" + string(e.key) + "\x00" + string(e.value)
}

func (v *verifier) device(k, val []byte) error {
	if _, _, err := index.DecodeDevice(k); err != nil {
		v.report(0, bucketDevices, k, "%v", err)
		return nil
	}
	d := &deviceCheck{counted: map[uint16]suiteCounts{}}
	if err := decode(val, &d.rec); err != nil {
		v.report(0, bucketDevices, k, "%v", err)
		return nil
	}
	v.devices[string(k)] = d
	v.counted.addDevice(&d.rec, 1)
	return nil
}

func (v *verifier) keyPackage(k, val []byte) error {
	c := &kpCheck{}
	r := &c.rec
	if _, _, _, _, err := index.DecodeKeyPackage(k); err != nil {
		v.report(0, bucketKPs, k, "%v", err)
		return nil
	}
	if err := decode(val, r); err != nil {
		v.report(0, bucketKPs, k, "%v", err)
		return nil
	}
	if len(r.Ref) == 0 || len(r.Ref) > maxRefLen {
		v.report(0, bucketKPs, k, "ref of %d bytes", len(r.Ref))
		return nil
	}
	c.where = fmt.Sprintf("%s (ref %x)", describeKey(bucketKPs, k), r.Ref)
	report := func(invariant int, format string, args ...any) { v.reportAt(invariant, c.where, format, args...) }
	if other := v.kps[string(r.Ref)]; other != nil {
		report(1, "the ref of another KeyPackage, %s", other.where)
		return nil
	}
	v.kps[string(r.Ref)], v.kpOrder = c, append(v.kpOrder, c)
	v.counted.addKP(r, 1)
	if key := r.key(); !bytes.Equal(key, k) {
		report(1, "its fields make the key %s", describeKey(bucketKPs, key))
	}
	if r.Seq > v.kpSeq {
		report(1, "seq %d is beyond the publish sequence %d: a publish may reuse its key", r.Seq, v.kpSeq)
	}
	switch r.State {
	case kpd.StateAvailable, kpd.StateClaimed, kpd.StateConsumed:
	default:
		report(1, "unknown state %q", r.State)
	}
	if r.LastResort && r.State != kpd.StateAvailable {
		report(1, "last resort in state %s: last resorts are never claimed or consumed", r.State)
	}
	if r.Lapsed && r.State == kpd.StateAvailable && !r.Retired {
		report(1, "lapsed, but available: the sweeper deletes available KeyPackages when they expire")
	}
	if r.Retired && (!r.LastResort || r.Pending == 0) {
		report(1, "retired, but not a last resort awaiting a pending delivery")
	}
	if r.Welcome != "" && r.State == kpd.StateAvailable {
		report(1, "available, yet routed by welcome %s", r.Welcome)
	}
	if r.State != kpd.StateConsumed && !r.Spent && len(r.Data) == 0 {
		report(1, "%s without KeyPackage bytes", r.State)
	}
	if r.Spent && (r.State == kpd.StateAvailable || r.Lapsed || r.Pending > 0 || len(r.Data) > 0) {
		report(1, "spent, but %s%s with %d pending deliveries and %d bytes: only a claimed or consumed KeyPackage "+
			"without deliveries, before its not_after, is spent, and its bytes go", r.State, map[bool]string{true: ", lapsed,"}[r.Lapsed], r.Pending, len(r.Data))
	}
	r.Data = nil // the record stays in memory for later checks, which need only its metadata
	if r.State == kpd.StateConsumed && r.ConsumedAt == nil {
		report(1, "consumed without a consumption time")
	}
	if (r.State == kpd.StateClaimed || r.State == kpd.StateConsumed) && (r.Claimer == "" || r.ClaimedAt == nil) {
		report(2, "%s without claimer and claim time", r.State)
	}
	dev := v.devices[string(index.Device(r.DID, r.Device))]
	if dev == nil {
		report(1, "belongs to %s device %q, which does not exist", r.DID, r.Device)
	} else {
		sc, ok := dev.rec.Suites[r.Suite]
		if !ok {
			report(3, "device %s %q has no counters for its suite %d", r.DID, r.Device, r.Suite)
		}
		a, cl := counts(r)
		if a > 0 && r.Seq < sc.Head {
			report(1, "available, but below the head %d of its pool: claims never reach it", sc.Head)
		}
		counted := dev.counted[r.Suite]
		counted.Available, counted.Claimed = counted.Available+a, counted.Claimed+cl
		dev.counted[r.Suite] = counted
	}
	v.implied(1, c.where, string(r.State)+" KeyPackage", indexEntries(k, r))
	return nil
}

// implied records the index entries that a record (what, at where)
// implies, and reports those missing or holding another value as
// violations of invariant.
func (v *verifier) implied(invariant int, where, what string, entries []indexEntry) {
	for _, e := range entries {
		v.entries[entryKey(e)] = true
		got, ok := v.t.has(e.bucket, e.key)
		switch {
		case !ok:
			v.reportAt(invariant, where, "%s missing from index %s (%s)", what, e.bucket, describeKey(e.bucket, e.key))
		case !bytes.Equal(got, e.value):
			v.report(invariant, e.bucket, e.key, "holds %s, not the %s of %s",
				describeValue(e.bucket, got), describeValue(e.bucket, e.value), where)
		}
	}
}

// checkIndex returns the check of one index bucket: each entry must be
// one that its KeyPackage implies.
func (v *verifier) checkIndex(bucket []byte) func(k, val []byte) error {
	return func(k, val []byte) error {
		if v.entries[entryKey(indexEntry{bucket, k, val})] {
			return nil
		}
		ref, err := indexRef(bucket, k, val)
		if err != nil {
			v.report(0, bucket, k, "%v", err)
			return nil
		}
		if c := v.kps[string(ref)]; c == nil {
			v.report(1, bucket, k, "names KeyPackage %x, which does not exist", ref)
		} else {
			v.report(1, bucket, k, "does not match KeyPackage %x (%s%s of %s %q)", ref, c.rec.State, kindOf(&c.rec), c.rec.DID, c.rec.Device)
		}
		return nil
	}
}

func kindOf(r *kpRecord) string {
	switch {
	case r.Retired:
		return ", retired last resort"
	case r.LastResort:
		return ", last resort"
	}
	return ""
}

// indexRef returns the ref an index entry names.
func indexRef(bucket, k, val []byte) ([]byte, error) {
	switch string(bucket) {
	case string(bucketRefs):
		return k, nil
	case string(bucketLastResort):
		_, _, _, err := index.DecodeDeviceSuite(k)
		return val, err
	}
	_, ref, err := index.DecodeTimeRef(k)
	return ref, err
}

func (v *verifier) delivery(k, val []byte) error {
	did, device, id, err := index.DecodeDelivery(k)
	var d deliveryRecord
	if err == nil {
		err = decode(val, &d)
	}
	if err != nil {
		v.report(0, bucketDeliveries, k, "%v", err)
		return nil
	}
	dev := v.devices[string(index.Device(did, device))]
	if dev == nil {
		v.report(4, bucketDeliveries, k, "device does not exist")
	}
	var w welcomeRecord
	if ok, err := v.t.get(bucketWelcomes, []byte(id), &w); err != nil || !ok {
		v.report(4, bucketDeliveries, k, "welcome %s does not exist", id)
	} else if i := slices.IndexFunc(w.Recipients, func(e recipientEntry) bool {
		return e.DID == did && e.Device == device && e.Gone == nil
	}); i < 0 {
		v.report(4, bucketDeliveries, k, "welcome %s does not list this device", id)
	} else if !slices.EqualFunc(w.Recipients[i].Refs, d.Refs, bytes.Equal) {
		v.report(4, bucketDeliveries, k, "refs differ from those welcome %s lists for this device", id)
	}
	v.counted.addDelivery(&d, 1)
	v.implied(4, describeKey(bucketDeliveries, k), string(d.Status.State)+" delivery", deliveryEntries(did, device, id, &d))
	switch d.Status.State {
	case kpd.DeliveryAcked, kpd.DeliveryRejected:
		// Its regular KeyPackages were consumed by it, unless the
		// sweeper has purged them since.
		for _, ref := range d.Refs {
			c := v.kps[string(ref)]
			if c != nil && !c.rec.LastResort && !c.rec.Spent && c.rec.DID == did && c.rec.Device == device &&
				(c.rec.State != kpd.StateConsumed || c.rec.Welcome != id) {
				v.report(4, bucketDeliveries, k, "%s, but names KeyPackage %x, which is %s for welcome %q",
					d.Status.State, ref, c.rec.State, c.rec.Welcome)
			}
		}
		return nil
	case kpd.DeliveryExpired:
		return nil
	case kpd.DeliveryPending:
	default:
		v.report(4, bucketDeliveries, k, "unknown state %q", d.Status.State)
		return nil
	}
	if dev != nil {
		dev.pending++
	}
	if len(d.Refs) == 0 {
		v.report(4, bucketDeliveries, k, "pending delivery names no KeyPackage")
	}
	for _, ref := range d.Refs {
		c := v.kps[string(ref)]
		switch {
		case c == nil:
			v.report(4, bucketDeliveries, k, "names KeyPackage %x, which does not exist", ref)
			continue
		case c.rec.DID != did || c.rec.Device != device:
			v.report(4, bucketDeliveries, k, "names KeyPackage %x of another device", ref)
		case c.rec.LastResort:
			if c.rec.State != kpd.StateAvailable {
				v.report(4, bucketDeliveries, k, "names last resort %x, which is %s", ref, c.rec.State)
			}
		case c.rec.State != kpd.StateClaimed || c.rec.Welcome != id:
			v.report(4, bucketDeliveries, k, "names KeyPackage %x, which is %s for welcome %q", ref, c.rec.State, c.rec.Welcome)
		}
		c.deliveries++
	}
	return nil
}

func (v *verifier) pendingEntry(k, val []byte) error {
	_, _, seq, err := index.DecodePending(k)
	switch {
	case err != nil:
		v.report(0, bucketPending, k, "%v", err)
	case !v.entries[entryKey(indexEntry{bucketPending, k, val})]:
		v.report(4, bucketPending, k, "queues welcome %s, which has no pending delivery with this key", val)
	}
	if err == nil && seq > v.pendingSeq {
		v.report(4, bucketPending, k, "seq %d is beyond the queue's sequence %d: a new delivery may reuse its key", seq, v.pendingSeq)
	}
	return nil
}

// deliveryIndex returns the check of a time index of deliveries in one
// kind of state: each entry must be one that its delivery implies.
func (v *verifier) deliveryIndex(bucket []byte, kind string) func(k, val []byte) error {
	return func(k, val []byte) error {
		if v.entries[entryKey(indexEntry{bucket, k, val})] {
			return nil
		}
		if _, dk, err := index.DecodeTimeRef(k); err != nil {
			v.report(0, bucket, k, "%v", err)
		} else if _, _, _, err := index.DecodeDelivery(dk); err != nil {
			v.report(0, bucket, k, "%v", err)
		} else {
			v.report(4, bucket, k, "names no %s delivery with this time", kind)
		}
		return nil
	}
}

func (v *verifier) orphanEntry(k, val []byte) error {
	if v.entries[entryKey(indexEntry{bucketOrphans, k, val})] {
		return nil
	}
	if _, id, err := index.DecodeTimeRef(k); err != nil {
		v.report(0, bucketOrphans, k, "%v", err)
	} else {
		v.report(4, bucketOrphans, k, "names welcome %s, which is not a Welcome without deliveries that ended then", id)
	}
	return nil
}

func (v *verifier) event(k, val []byte) error {
	var e eventRecord
	if seq, err := index.DecodeUint64(k); err != nil {
		v.report(0, bucketOutbox, k, "%v", err)
	} else if err := decode(val, &e); err != nil {
		v.report(0, bucketOutbox, k, "%v", err)
	} else if seq > v.outboxSeq {
		v.report(0, bucketOutbox, k, "seq %d is beyond the outbox's sequence %d: a new event may overwrite it", seq, v.outboxSeq)
	}
	v.counted.Events++
	return nil
}

func (v *verifier) welcome(k, val []byte) error {
	var w welcomeRecord
	if err := decode(val, &w); err != nil {
		v.report(0, bucketWelcomes, k, "%v", err)
		return nil
	}
	for _, e := range w.Recipients {
		if e.Gone == nil && v.t.bucket(bucketDeliveries).Get(index.Delivery(e.DID, e.Device, string(k))) == nil {
			v.report(4, bucketWelcomes, k, "recipient %s %q has no delivery", e.DID, e.Device)
		}
	}
	v.counted.addWelcome(&w, 1)
	v.implied(4, describeKey(bucketWelcomes, k), "Welcome without deliveries", welcomeEntries(string(k), &w))
	return nil
}

func (v *verifier) token(k, val []byte) error {
	var t tokenRecord
	if err := decode(val, &t); err != nil {
		v.report(0, bucketTokens, k, "%v", err)
	}
	return nil
}

// counters compares every counter with what Verify counted.
func (v *verifier) counters() {
	keys := make([]string, 0, len(v.devices))
	for k := range v.devices {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		d := v.devices[k]
		suites := make([]uint16, 0, len(d.rec.Suites))
		for s := range d.rec.Suites {
			suites = append(suites, s)
		}
		slices.Sort(suites)
		for _, s := range suites {
			got, want := d.rec.Suites[s], d.counted[s]
			if got.Available != want.Available || got.Claimed != want.Claimed {
				v.report(3, bucketDevices, []byte(k), "suite %d counters available=%d claimed=%d, records say %d and %d",
					s, got.Available, got.Claimed, want.Available, want.Claimed)
			}
			if got.Head > v.kpSeq+1 {
				v.report(1, bucketDevices, []byte(k), "suite %d pool head %d is beyond the next publish sequence %d: claims would never reach what is published next",
					s, got.Head, v.kpSeq+1)
			}
		}
		if d.rec.Pending != d.pending {
			v.report(3, bucketDevices, []byte(k), "pending welcomes counter %d, deliveries say %d", d.rec.Pending, d.pending)
		}
	}
	for _, c := range v.kpOrder {
		if c.rec.Pending != c.deliveries {
			v.reportAt(3, c.where, "pending deliveries counter %d, deliveries say %d", c.rec.Pending, c.deliveries)
		}
	}
	if v.stored != nil {
		v.counted.Dropped = v.stored.Dropped
		v.counted.normalize()
		v.stored.normalize()
		for _, d := range statsDiff(v.stored, v.counted) {
			v.report(3, bucketMeta, keyStats, "%s", d)
		}
	}
}

// statsDiff describes how the stored store-wide counters differ from those
// the records add up to, one line per counter.
func statsDiff(stored, counted *statsRecord) []string {
	var out []string
	diff := func(what string, got, want int64) {
		if got != want {
			out = append(out, fmt.Sprintf("%s %d, records say %d", what, got, want))
		}
	}
	suites := make(map[uint16]bool)
	for s := range stored.Suites {
		suites[s] = true
	}
	for s := range counted.Suites {
		suites[s] = true
	}
	for _, suite := range slices.Sorted(maps.Keys(suites)) {
		g, w := stored.Suites[suite], counted.Suites[suite]
		diff(fmt.Sprintf("suite %d available", suite), g.Available, w.Available)
		diff(fmt.Sprintf("suite %d claimed", suite), g.Claimed, w.Claimed)
		diff(fmt.Sprintf("suite %d consumed", suite), g.Consumed, w.Consumed)
		diff(fmt.Sprintf("suite %d last resorts", suite), g.LastResort, w.LastResort)
	}
	diff("devices", stored.Devices, counted.Devices)
	diff("welcomes", stored.Welcomes, counted.Welcomes)
	for _, state := range []kpd.DeliveryState{kpd.DeliveryPending, kpd.DeliveryAcked, kpd.DeliveryRejected, kpd.DeliveryExpired} {
		diff(fmt.Sprintf("%s deliveries", state), stored.Deliveries[state], counted.Deliveries[state])
	}
	if !slices.Equal(stored.Pools, counted.Pools) {
		out = append(out, fmt.Sprintf("pool sizes %v, records say %v", stored.Pools, counted.Pools))
	}
	diff("outbox events", stored.Events, counted.Events)
	return out
}

// keyFormats render the keys of the buckets whose keys are composite.
var keyFormats = map[string]func(k []byte) (string, error){
	string(bucketDevices): func(k []byte) (string, error) {
		did, device, err := index.DecodeDevice(k)
		return did + "/" + device, err
	},
	string(bucketKPs): func(k []byte) (string, error) {
		did, device, suite, seq, err := index.DecodeKeyPackage(k)
		return fmt.Sprintf("%s/%s/%d/%d", did, device, suite, seq), err
	},
	string(bucketLastResort): func(k []byte) (string, error) {
		did, device, suite, err := index.DecodeDeviceSuite(k)
		return fmt.Sprintf("%s/%s/%d", did, device, suite), err
	},
	string(bucketExpiry):   timeRefFormat,
	string(bucketClaimed):  timeRefFormat,
	string(bucketConsumed): timeRefFormat,
	string(bucketDeliveries): func(k []byte) (string, error) {
		did, device, id, err := index.DecodeDelivery(k)
		return did + "/" + device + "/" + id, err
	},
	string(bucketPending): func(k []byte) (string, error) {
		did, device, seq, err := index.DecodePending(k)
		return fmt.Sprintf("%s/%s/%d", did, device, seq), err
	},
	string(bucketWelcomes): func(k []byte) (string, error) { return string(k), nil },
	string(bucketMeta):     func(k []byte) (string, error) { return string(k), nil },
	string(bucketSince):    timeDeliveryFormat,
	string(bucketFinished): timeDeliveryFormat,
	string(bucketOrphans): func(k []byte) (string, error) {
		t, id, err := index.DecodeTimeRef(k)
		return t.Format(time.RFC3339Nano) + "/" + string(id), err
	},
	string(bucketOutbox): func(k []byte) (string, error) {
		seq, err := index.DecodeUint64(k)
		return fmt.Sprint(seq), err
	},
}

func timeDeliveryFormat(k []byte) (string, error) {
	t, dk, err := index.DecodeTimeRef(k)
	if err != nil {
		return "", err
	}
	did, device, id, err := index.DecodeDelivery(dk)
	return t.Format(time.RFC3339Nano) + "/" + did + "/" + device + "/" + id, err
}

func timeRefFormat(k []byte) (string, error) {
	t, ref, err := index.DecodeTimeRef(k)
	return fmt.Sprintf("%s/%x", t.Format(time.RFC3339Nano), ref), err
}

// describeValue renders the value of an index entry: a kps key (refs) or
// a ref, in hex.
func describeValue(bucket, val []byte) string {
	if bytes.Equal(bucket, bucketRefs) {
		return describeKey(bucketKPs, val)
	}
	return fmt.Sprintf("%x", val)
}

// describeKey renders a key of a bucket readably; refs, hashes and keys that
// do not decode as hex.
func describeKey(bucket, k []byte) string {
	s := fmt.Sprintf("%x", k)
	if f := keyFormats[string(bucket)]; f != nil {
		if d, err := f(k); err == nil {
			s = d
		}
	}
	return string(bucket) + "/" + s
}
