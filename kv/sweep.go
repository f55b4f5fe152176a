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

// SweepStats reports what one Sweep did.
type SweepStats struct {
	// ExpiredKeyPackages counts available KeyPackages past their
	// not_after that were deleted (or, last resorts with pending
	// deliveries, retired).
	ExpiredKeyPackages int
	// ClaimsPurged counts claimed KeyPackages deleted after the claim
	// retention without a pending delivery.
	ClaimsPurged int
	// ConsumedPurged counts consumed KeyPackages whose metadata was
	// deleted after the consumed retention.
	ConsumedPurged int
	// DeliveriesExpired counts pending deliveries marked expired after the
	// Welcome retention.
	DeliveriesExpired int
	// DeliveriesPurged counts finished deliveries deleted after the
	// consumed retention.
	DeliveriesPurged int
	// WelcomesPurged counts Welcomes deleted after their last delivery.
	WelcomesPurged int
	// Transactions counts the write transactions the sweep took.
	Transactions int
}

func (s *SweepStats) add(o SweepStats) {
	s.ExpiredKeyPackages += o.ExpiredKeyPackages
	s.ClaimsPurged += o.ClaimsPurged
	s.ConsumedPurged += o.ConsumedPurged
	s.DeliveriesExpired += o.DeliveriesExpired
	s.DeliveriesPurged += o.DeliveriesPurged
	s.WelcomesPurged += o.WelcomesPurged
	s.Transactions += o.Transactions
}

// sweepPhase is one rule of the sweeper: the entries of a time index (keys
// starting with a time) at or before now less the retention are due, and
// apply handles one, given the rest of its key.
type sweepPhase struct {
	bucket    []byte
	retention func(*Options) time.Duration
	apply     func(s *sweeper, rest []byte) error
}

// sweepPhases run in this order, so that what one phase releases is due
// for the next ones in the same Sweep: expired deliveries release their
// claimed KeyPackages and retired last resorts; purged deliveries orphan
// their Welcomes.
var sweepPhases = []sweepPhase{
	{bucketSince, func(o *Options) time.Duration { return o.WelcomeRetention }, (*sweeper).expireDelivery},
	{bucketExpiry, func(*Options) time.Duration { return 0 }, (*sweeper).expireKeyPackage},
	{bucketClaimed, func(o *Options) time.Duration { return o.ClaimRetention }, (*sweeper).purgeClaim},
	{bucketConsumed, func(o *Options) time.Duration { return o.ConsumedRetention }, (*sweeper).purgeConsumed},
	{bucketFinished, func(o *Options) time.Duration { return o.ConsumedRetention }, (*sweeper).purgeDelivery},
	{bucketOrphans, func(o *Options) time.Duration { return o.ConsumedRetention }, (*sweeper).purgeWelcome},
}

// sweepPos is where a Sweep stands: a phase, and the last key of its index
// that it examined.
type sweepPos struct {
	phase int
	after []byte
}

// Sweep removes what is due at now, in write transactions that each
// examine at most Options.SweepBatchSize index entries, until nothing is
// due or ctx is done; other writes, claims included, commit between its
// transactions. In this order, it:
//
//   - marks pending deliveries created WelcomeRetention or longer before
//     now expired: a regular KeyPackage they name stays claimed, bound to
//     its Welcome, and is purged like a claim no Welcome named (below); a
//     retired last resort whose last pending delivery this was is deleted;
//   - deletes available KeyPackages whose not_after is at or before now;
//     a last resort that pending deliveries name is retired instead (not
//     served any more, deleted with its last pending delivery), and one
//     already retired is left for that;
//   - deletes claimed KeyPackages claimed ClaimRetention or longer before
//     now that no pending delivery names;
//   - deletes consumed KeyPackages' metadata ConsumedRetention after their
//     consumption;
//   - deletes deliveries that finished (acked, rejected, expired)
//     ConsumedRetention or longer before now, keeping their final status in
//     their Welcome for its sender;
//   - deletes Welcomes none of whose deliveries is left (purged, or gone
//     with their devices) ConsumedRetention after the latest end of one.
//
// Every change moves counters and indexes as the store's other writes do
// and writes the events they write (a device's available count falling
// across the low watermark, or to zero, by expiry). Entries that become
// due at a place in an index the sweep has passed wait for the next
// Sweep. The returned stats count what the committed transactions did,
// also when an error (ctx.Err(), or a failed transaction) ends the sweep
// early.
func (db *DB) Sweep(ctx context.Context, now time.Time) (SweepStats, error) {
	var (
		total SweepStats
		pos   sweepPos
	)
	for {
		var (
			st   SweepStats
			next sweepPos
			done bool
		)
		err := db.write(ctx, func(t *txn) error {
			t.now = now.UTC()
			s := &sweeper{t: t, devices: map[string]*deviceRecord{}, welcomes: map[string][2]*welcomeRecord{}}
			var err error
			if next, done, err = s.run(pos, db.opts.SweepBatchSize); err != nil {
				return err
			}
			st = s.stats
			if err := s.saveWelcomes(); err != nil {
				return err
			}
			return s.saveDevices()
		})
		if err != nil {
			return total, err
		}
		st.Transactions = 1
		total.add(st)
		if done {
			return total, nil
		}
		pos = next
	}
}

// sweepWelcomeBytes bounds the Welcome bytes one transaction of a Sweep
// rewrites: purging a finished delivery rewrites its Welcome's record,
// Welcome bytes included (up to 4 MiB each by default), so a batch of
// deliveries of different large Welcomes would otherwise hold the writer,
// and every claim, for as long as copying gigabytes takes. A transaction
// ends after the entry that reaches the bound.
var sweepWelcomeBytes = 8 << 20

// sweeper is one transaction of a Sweep. It keeps the devices whose
// KeyPackages it changes and stores each once, at the end, so that a
// device's available count is compared with the watermark once per
// transaction; and the Welcomes whose deliveries it purges, stored once
// each, however many of their deliveries it purges.
type sweeper struct {
	t       *txn
	stats   SweepStats
	devices map[string]*deviceRecord // by index.Device key
	// welcomes are the Welcomes changed and not yet stored, by ID;
	// welcomeBytes counts the bytes of those changed in the transaction.
	welcomes     map[string][2]*welcomeRecord // stored, changed
	welcomeBytes int
}

// run handles at most budget due entries from pos on, fewer if they
// rewrite sweepWelcomeBytes of Welcomes, and returns the position reached
// and whether every phase is done.
func (s *sweeper) run(pos sweepPos, budget int) (sweepPos, bool, error) {
	for ; pos.phase < len(sweepPhases); pos.phase, pos.after = pos.phase+1, nil {
		ph := sweepPhases[pos.phase]
		keys, err := s.due(ph.bucket, pos.after, s.t.now.Add(-ph.retention(s.t.opts)), budget)
		if err != nil {
			return pos, false, err
		}
		for _, k := range keys {
			if err := ph.apply(s, k[index.TimeLen:]); err != nil {
				return pos, false, fmt.Errorf("sweep %s: %w", describeKey(ph.bucket, k), err)
			}
			pos.after = k
			if budget--; budget == 0 || s.welcomeBytes >= sweepWelcomeBytes {
				return pos, false, nil
			}
		}
		// What this phase changed is stored before the next phase reads.
		if err := s.saveWelcomes(); err != nil {
			return pos, false, err
		}
	}
	return pos, true, nil
}

// due returns up to limit keys of a time index after the key after (nil:
// from the start) whose time is at or before cutoff.
func (s *sweeper) due(bucket, after []byte, cutoff time.Time, limit int) ([][]byte, error) {
	var keys [][]byte
	c := s.t.bucket(bucket).Cursor()
	k, _ := c.First()
	if after != nil {
		if k, _ = c.Seek(after); bytes.Equal(k, after) {
			k, _ = c.Next()
		}
	}
	for ; k != nil && len(keys) < limit; k, _ = c.Next() {
		at, _, err := index.DecodeTimeRef(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", describeKey(bucket, k), err)
		}
		if at.After(cutoff) {
			break
		}
		keys = append(keys, bytes.Clone(k))
	}
	return keys, nil
}

// device returns the record of a device whose KeyPackage or delivery the
// sweep changes; saveDevices stores it.
func (s *sweeper) device(did, device string) (*deviceRecord, error) {
	key := string(index.Device(did, device))
	if d := s.devices[key]; d != nil {
		return d, nil
	}
	d, err := s.t.device(did, device)
	if err == nil && d == nil {
		err = fmt.Errorf("device %s %q does not exist", did, device)
	}
	if err != nil {
		return nil, err
	}
	s.devices[key] = d
	return d, nil
}

func (s *sweeper) saveDevices() error {
	for _, key := range slices.Sorted(maps.Keys(s.devices)) {
		did, device, err := index.DecodeDevice([]byte(key))
		if err != nil {
			return err
		}
		if err := s.t.saveDevice(did, device, s.devices[key]); err != nil {
			return err
		}
	}
	return nil
}

// keyPackage returns a KeyPackage that an index names, with its device.
func (s *sweeper) keyPackage(ref []byte) (*kpRecord, *deviceRecord, error) {
	r, err := s.t.mustKeyPackage(ref, "a time index")
	if err != nil {
		return nil, nil, err
	}
	dev, err := s.device(r.DID, r.Device)
	return r, dev, err
}

// delivery returns a delivery that an index names, by its key.
func (s *sweeper) delivery(key []byte) (*deliveryRecord, error) {
	var d deliveryRecord
	ok, err := s.t.get(bucketDeliveries, key, &d)
	if err == nil && !ok {
		err = fmt.Errorf("no delivery %s", describeKey(bucketDeliveries, key))
	}
	return &d, err
}

func (s *sweeper) expireDelivery(key []byte) error {
	did, device, id, err := index.DecodeDelivery(key)
	if err != nil {
		return err
	}
	d, err := s.delivery(key)
	if err != nil {
		return err
	}
	if d.Status.State != kpd.DeliveryPending {
		return fmt.Errorf("delivery of welcome %s is %s, not pending", id, d.Status.State)
	}
	dev, err := s.device(did, device)
	if err != nil {
		return err
	}
	s.stats.DeliveriesExpired++
	return s.t.endDelivery(did, device, id, d, deliveryStatus{State: kpd.DeliveryExpired}, dev)
}

// expireKeyPackage deletes an available KeyPackage past its not_after, or
// retires it if it is a last resort that pending deliveries name (see
// txn.removeAvailable). What it keeps (such a last resort, and claimed and
// consumed KeyPackages, which the claim and consumed retentions govern)
// lapses: it leaves the expiry index.
func (s *sweeper) expireKeyPackage(ref []byte) error {
	r, dev, err := s.keyPackage(ref)
	if err != nil {
		return err
	}
	if r.Spent { // its retention was counted when it was purged
		return s.t.transition(r, nil, dev)
	}
	if r.State == kpd.StateAvailable && !r.Retired {
		s.stats.ExpiredKeyPackages++
		if !r.LastResort || r.Pending == 0 {
			return s.t.transition(r, nil, dev)
		}
	}
	n := *r
	n.Lapsed = true
	n.Retired = r.State == kpd.StateAvailable
	return s.t.transition(r, &n, dev)
}

func (s *sweeper) purgeClaim(ref []byte) error {
	r, dev, err := s.keyPackage(ref)
	if err != nil || r.Pending > 0 {
		return err
	}
	s.stats.ClaimsPurged++
	return s.purge(r, dev)
}

func (s *sweeper) purgeConsumed(ref []byte) error {
	r, dev, err := s.keyPackage(ref)
	if err != nil {
		return err
	}
	s.stats.ConsumedPurged++
	return s.purge(r, dev)
}

// purge ends a claimed or consumed KeyPackage past its retention: it is
// deleted once its not_after has passed (it has lapsed); until then only
// its ref stays, spent (see kpRecord.Spent), so that the same bytes cannot
// be published and handed out again while they are still valid.
func (s *sweeper) purge(r *kpRecord, dev *deviceRecord) error {
	if r.Lapsed {
		return s.t.transition(r, nil, dev)
	}
	n := *r
	n.Spent, n.Data = true, nil
	return s.t.transition(r, &n, dev)
}

func (s *sweeper) purgeDelivery(key []byte) error {
	did, device, id, err := index.DecodeDelivery(key)
	if err != nil {
		return err
	}
	d, err := s.delivery(key)
	if err != nil {
		return err
	}
	if err := s.t.saveDelivery(did, device, id, d, nil, nil); err != nil {
		return err
	}
	s.stats.DeliveriesPurged++
	return s.recipientGone(id, did, device, d.Status)
}

// recipientGone is txn.recipientGone for the sweep: the Welcome is stored
// once per transaction (saveWelcomes), not once per delivery.
func (s *sweeper) recipientGone(id, did, device string, final deliveryStatus) error {
	w, ok := s.welcomes[id]
	if !ok {
		old, next, err := s.t.welcomeToEdit(id)
		if err != nil || old == nil {
			return err
		}
		w = [2]*welcomeRecord{old, next}
		s.welcomes[id] = w
		s.welcomeBytes += len(old.Data)
	}
	w[1].markGone(did, device, final)
	return nil
}

// saveWelcomes stores the Welcomes the sweep changed.
func (s *sweeper) saveWelcomes() error {
	for _, id := range slices.Sorted(maps.Keys(s.welcomes)) {
		w := s.welcomes[id]
		if err := s.t.saveWelcome(id, w[0], w[1]); err != nil {
			return err
		}
		delete(s.welcomes, id)
	}
	return nil
}

func (s *sweeper) purgeWelcome(id []byte) error {
	var w welcomeRecord
	ok, err := s.t.get(bucketWelcomes, id, &w)
	if err == nil && !ok {
		err = fmt.Errorf("welcome %s does not exist", id)
	}
	if err != nil {
		return err
	}
	s.stats.WelcomesPurged++
	return s.t.saveWelcome(string(id), &w, nil)
}
