package kv

import (
	"context"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
)

// The store-wide counters (meta/stats) are the sum of what every record
// contributes:
//
//   - a KeyPackage, one to its suite's count of its kind: Available (a
//     regular available one), Claimed, Consumed, or LastResort (a last
//     resort that is not retired; a retired one, kept only until its
//     pending deliveries finish, counts nowhere);
//   - a device, one to Devices and, for each suite it has counters for
//     (every suite it ever had a KeyPackage of: a pool exists from the
//     device's first KeyPackage of the suite until the device is deleted,
//     even when empty), one to the PoolSizes bucket of its available
//     count;
//   - a delivery, one to Deliveries of its state; a Welcome, one to
//     Welcomes; an outbox event, one to Events.
//
// Every write that saves a record adds to its txn's delta the record's
// contribution after, less its contribution before; the deltas of a
// commit's operations are summed (DB.pending), and txn.flush merges the sum
// into meta/stats before the transaction commits. Nothing is
// counted by scanning, except once: when a database gets the counters
// (a new one, or one from before schema 2) or when kpd.PoolSizeBounds
// changed (ensureStats).

// bounds returns the pool-size bounds s counts with: its own, or, for a
// delta that has none, kpd.PoolSizeBounds.
func (s *statsRecord) bounds() []int {
	if s.Bounds == nil {
		return kpd.PoolSizeBounds
	}
	return s.Bounds
}

// poolBucket returns the index of the bucket that counts a pool of n
// KeyPackages: the first bound at least n, or len(bounds) beyond the last.
func poolBucket(bounds []int, n int) int {
	i, _ := slices.BinarySearch(bounds, n)
	return i
}

func (s *statsRecord) addSuite(suite uint16, d suiteTotals, sign int64) {
	if s.Suites == nil {
		s.Suites = make(map[uint16]suiteTotals)
	}
	c := s.Suites[suite]
	c.Available += sign * d.Available
	c.Claimed += sign * d.Claimed
	c.Consumed += sign * d.Consumed
	c.LastResort += sign * d.LastResort
	s.Suites[suite] = c
}

func (s *statsRecord) addPool(i int, n int64) {
	if len(s.Pools) <= i {
		s.Pools = append(s.Pools, make([]int64, i+1-len(s.Pools))...)
	}
	s.Pools[i] += n
}

// addKP adds sign times a KeyPackage's contribution (none for nil).
func (s *statsRecord) addKP(r *kpRecord, sign int64) {
	if r == nil {
		return
	}
	var d suiteTotals
	switch {
	case r.Spent:
		return
	case r.LastResort && !r.Retired:
		d.LastResort = 1
	case r.LastResort:
		return
	case r.State == kpd.StateAvailable:
		d.Available = 1
	case r.State == kpd.StateClaimed:
		d.Claimed = 1
	case r.State == kpd.StateConsumed:
		d.Consumed = 1
	}
	s.addSuite(r.Suite, d, sign)
}

// addDevice adds sign times a device's contribution (none for nil).
func (s *statsRecord) addDevice(d *deviceRecord, sign int64) {
	if d == nil {
		return
	}
	s.Devices += sign
	for _, c := range d.Suites {
		s.addPool(poolBucket(s.bounds(), c.Available), sign)
	}
}

// addDelivery adds sign times a delivery's contribution (none for nil).
func (s *statsRecord) addDelivery(d *deliveryRecord, sign int64) {
	if d == nil {
		return
	}
	if s.Deliveries == nil {
		s.Deliveries = make(map[kpd.DeliveryState]int64)
	}
	s.Deliveries[d.Status.State] += sign
}

// addWelcome adds sign times a Welcome's contribution (none for nil).
func (s *statsRecord) addWelcome(w *welcomeRecord, sign int64) {
	if w != nil {
		s.Welcomes += sign
	}
}

// merge adds the counters of o (a delta) to s.
func (s *statsRecord) merge(o *statsRecord) {
	for suite, d := range o.Suites {
		s.addSuite(suite, d, 1)
	}
	s.Devices += o.Devices
	s.Welcomes += o.Welcomes
	for state, n := range o.Deliveries {
		if s.Deliveries == nil {
			s.Deliveries = make(map[kpd.DeliveryState]int64)
		}
		s.Deliveries[state] += n
	}
	for i, n := range o.Pools {
		s.addPool(i, n)
	}
	s.Events += o.Events
	s.Dropped += o.Dropped
}

// normalize drops zero map entries and trailing zero pool buckets, so that
// equal counts are equal records.
func (s *statsRecord) normalize() {
	maps.DeleteFunc(s.Suites, func(_ uint16, c suiteTotals) bool { return c == suiteTotals{} })
	maps.DeleteFunc(s.Deliveries, func(_ kpd.DeliveryState, n int64) bool { return n == 0 })
	if len(s.Suites) == 0 {
		s.Suites = nil
	}
	if len(s.Deliveries) == 0 {
		s.Deliveries = nil
	}
	for len(s.Pools) > 0 && s.Pools[len(s.Pools)-1] == 0 {
		s.Pools = s.Pools[:len(s.Pools)-1]
	}
	if len(s.Pools) == 0 {
		s.Pools = nil
	}
}

// empty reports whether a normalized delta changes nothing.
func (s *statsRecord) empty() bool {
	return s.Suites == nil && s.Devices == 0 && s.Welcomes == 0 && s.Deliveries == nil &&
		len(s.Pools) == 0 && s.Events == 0 && s.Dropped == 0
}

// stats returns the stored counters.
func (t *txn) stats() (*statsRecord, error) {
	var rec statsRecord
	ok, err := t.get(bucketMeta, keyStats, &rec)
	if err == nil && !ok {
		err = fmt.Errorf("the store-wide counters (%s/%s) are missing", bucketMeta, keyStats)
	}
	return &rec, err
}

// flush merges t.delta into the stored counters and enforces
// the outbox cap, before the transaction commits.
func (t *txn) flush() error {
	t.delta.normalize()
	if t.delta.empty() {
		return nil
	}
	rec, err := t.stats()
	if err != nil {
		return err
	}
	rec.merge(&t.delta)
	if over := rec.Events - int64(t.opts.MaxOutbox); over > 0 {
		n, err := t.dropOldestEvents(over)
		if err != nil {
			return err
		}
		rec.Events, rec.Dropped = rec.Events-n, rec.Dropped+n
	}
	rec.normalize()
	return t.put(bucketMeta, keyStats, rec)
}

// Stats returns the store-wide counters as of one read transaction, and
// the database's size. It reads them from meta/stats, which every write
// keeps current, and never scans. Suites are by suite id and include
// every suite with a non-zero count; Deliveries has every state;
// PoolSizes has len(kpd.PoolSizeBounds)+1 entries and counts each (device,
// suite) pool from the device's first KeyPackage of the suite until the
// device is deleted, empty pools (the first bucket) included.
func (db *DB) Stats(ctx context.Context) (kpd.Stats, error) {
	var st kpd.Stats
	err := db.read(ctx, func(t *txn) error {
		rec, err := t.stats()
		if err != nil {
			return err
		}
		st = rec.public()
		st.SizeBytes = t.tx.Size()
		return nil
	})
	return st, err
}

// public returns the counters as kpd.Stats (without SizeBytes).
func (s *statsRecord) public() kpd.Stats {
	st := kpd.Stats{
		Suites:        []kpd.SuiteStats{},
		Devices:       s.Devices,
		Welcomes:      s.Welcomes,
		Deliveries:    map[kpd.DeliveryState]int64{},
		PoolSizes:     make([]int64, len(s.bounds())+1),
		PendingEvents: s.Events,
	}
	for _, suite := range slices.Sorted(maps.Keys(s.Suites)) {
		c := s.Suites[suite]
		st.Suites = append(st.Suites, kpd.SuiteStats{CipherSuite: suite, Available: c.Available,
			Claimed: c.Claimed, Consumed: c.Consumed, LastResort: c.LastResort})
	}
	for _, state := range []kpd.DeliveryState{kpd.DeliveryPending, kpd.DeliveryAcked, kpd.DeliveryRejected, kpd.DeliveryExpired} {
		st.Deliveries[state] = s.Deliveries[state]
	}
	copy(st.PoolSizes, s.Pools)
	return st
}

// recount computes the counters from every record, with the current
// kpd.PoolSizeBounds. Dropped, which no record remembers, is kept from
// the stored counters, if any.
func recount(tx *bolt.Tx) (*statsRecord, error) {
	t := &txn{tx: tx}
	s := &statsRecord{Bounds: slices.Clone(kpd.PoolSizeBounds)}
	if old, err := t.stats(); err == nil {
		s.Dropped = old.Dropped
	}
	steps := []struct {
		bucket []byte
		add    func(v []byte) error
	}{
		{bucketDevices, func(v []byte) error { return decodeAndAdd(v, s.addDevice) }},
		{bucketKPs, func(v []byte) error { return decodeAndAdd(v, s.addKP) }},
		{bucketDeliveries, func(v []byte) error { return decodeAndAdd(v, s.addDelivery) }},
		{bucketWelcomes, func([]byte) error { s.Welcomes++; return nil }},
		{bucketOutbox, func([]byte) error { s.Events++; return nil }},
	}
	for _, step := range steps {
		err := tx.Bucket(step.bucket).ForEach(func(k, v []byte) error {
			if err := step.add(v); err != nil {
				return fmt.Errorf("%s: %w", describeKey(step.bucket, k), err)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	s.normalize()
	return s, nil
}

// decodeAndAdd decodes a record and adds its contribution with add.
func decodeAndAdd[T any](v []byte, add func(*T, int64)) error {
	var rec T
	if err := decode(v, &rec); err != nil {
		return err
	}
	add(&rec, 1)
	return nil
}

// ensureStats computes the counters of a database that has none (a new
// one, or one migrated from schema 1) or that counted pool sizes with
// other bounds than kpd.PoolSizeBounds: a one-time scan at open, after
// the migrations.
func ensureStats(tx *bolt.Tx) error {
	var rec statsRecord
	ok, err := (&txn{tx: tx}).get(bucketMeta, keyStats, &rec)
	if err != nil || (ok && slices.Equal(rec.Bounds, kpd.PoolSizeBounds)) {
		return err
	}
	s, err := recount(tx)
	if err != nil {
		return err
	}
	return (&txn{tx: tx}).put(bucketMeta, keyStats, s)
}
