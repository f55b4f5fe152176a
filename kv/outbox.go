package kv

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// DefaultEventsLimit is how many events PendingEvents returns when the
// caller sets no limit.
const DefaultEventsLimit = 100

// The outbox (SPEC section 8) holds events, keyed by a sequence that
// orders them, until the consumer that delivered them deletes them. With
// Options.Outbox, each event is written by the transaction of the change
// that causes it, so an event exists exactly when its change committed:
//
//   - kpd.EventKeyPackagesLow when a device's available count of a suite
//     (regular KeyPackages) falls to or below Options.LowWatermark (never
//     with LowWatermarkOff), by a claim, a delete, a sync or the sweeper,
//     once until a publish raises the count again (suiteCounts.Low): so
//     claims below the watermark do not fire again, and a device that
//     publishes, even without getting back above the watermark, fires
//     again at its next fall; and kpd.EventKeyPackagesExhausted when the
//     count goes from one or more to zero. Both compare the device record
//     before and after the transaction (txn.saveDevice);
//   - kpd.EventLastResortServed when a claim hands out a last resort;
//   - kpd.EventLastResortUsed when an ack, reject or take ends a delivery
//     made with a last resort;
//   - kpd.EventWelcomePending for each recipient device of a newly stored
//     Welcome.

// eventID returns the stable ID of the event with sequence seq, created
// at created. The sequence alone is not unique over a database's life: a
// restored snapshot, or a new database, numbers its events again from
// where it stands, and a receiver that drops the IDs it has processed
// would drop the new events as duplicates. Their creation times differ.
func eventID(seq uint64, created stamp) string {
	return fmt.Sprintf("evt_%016x_%016x", uint64(created.time().UnixNano()), seq)
}

// emit appends an event, at the operation's time, to the outbox if
// Options.Outbox is set.
func (t *txn) emit(e eventRecord) error {
	if !t.opts.Outbox {
		return nil
	}
	seq, err := t.bucket(bucketOutbox).NextSequence()
	if err != nil {
		return err
	}
	e.CreatedAt = stampOf(t.now)
	if err := t.put(bucketOutbox, index.Uint64(seq), &e); err != nil {
		return err
	}
	t.delta.Events++
	return nil
}

// watermarkEvents emits the low-watermark and exhaustion events of a device
// whose record goes from old to next, by suite, and keeps next's Low flags:
// set when a low event is written, cleared by any rise of the count (with
// the outbox off too, so that a flag never outlives a publish). A flag set
// under a higher watermark than today's does not hold back the event of a
// fall from above today's.
func (t *txn) watermarkEvents(did, device string, old, next *deviceRecord) error {
	lw := t.opts.LowWatermark
	for _, suite := range slices.Sorted(maps.Keys(next.Suites)) {
		prev, c := old.Suites[suite], next.Suites[suite]
		was, is := prev.Available, c.Available
		low := prev.Low
		var fire []string
		switch {
		case is > was:
			low = false // replenished: the next fall reports again
		case t.opts.Outbox && is < was && is <= lw && (!low || was > lw):
			// A negative watermark (LowWatermarkOff) is never reached.
			fire, low = append(fire, kpd.EventKeyPackagesLow), true
		}
		if t.opts.Outbox && was > 0 && is == 0 {
			fire = append(fire, kpd.EventKeyPackagesExhausted)
		}
		if c.Low != low {
			c.Low = low
			next.Suites[suite] = c
		}
		for _, typ := range fire {
			if err := t.emit(eventRecord{Type: typ, DID: did, Device: device, Suite: suite, Available: &is}); err != nil {
				return err
			}
		}
	}
	return nil
}

// dropOldestEvents deletes up to n of the oldest events and returns how
// many it deleted.
func (t *txn) dropOldestEvents(n int64) (int64, error) {
	c := t.bucket(bucketOutbox).Cursor()
	var dropped int64
	for k, _ := c.First(); k != nil && dropped < n; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return dropped, err
		}
		dropped++
	}
	return dropped, nil
}

// PendingEvents returns up to limit (0: DefaultEventsLimit) outbox events
// with a sequence above afterSeq, oldest first. It does not write; events
// stay until DeleteEvents removes them (or the outbox cap drops them), so a
// consumer that fails to deliver reads them again. Events survive restarts.
func (db *DB) PendingEvents(ctx context.Context, afterSeq uint64, limit int) ([]kpd.Event, error) {
	if limit <= 0 {
		limit = DefaultEventsLimit
	}
	out := []kpd.Event{}
	if afterSeq == math.MaxUint64 {
		return out, nil
	}
	err := db.read(ctx, func(t *txn) error {
		c := t.bucket(bucketOutbox).Cursor()
		for k, v := c.Seek(index.Uint64(afterSeq + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			seq, err := index.DecodeUint64(k)
			var e eventRecord
			if err == nil {
				err = decode(v, &e)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", describeKey(bucketOutbox, k), err)
			}
			out = append(out, e.public(seq))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (e *eventRecord) public(seq uint64) kpd.Event {
	ev := kpd.Event{ID: eventID(seq, e.CreatedAt), Type: e.Type, Seq: seq, DID: e.DID, Device: e.Device,
		CipherSuite: e.Suite, Available: e.Available, WelcomeID: e.WelcomeID, ConvoID: e.ConvoID,
		Sender: e.Sender, CreatedAt: e.CreatedAt.time()}
	if e.Ref != nil {
		ev.Ref = kpd.RefOf(e.Ref)
	}
	return ev
}

// DeleteEvents removes delivered events from the outbox, in one
// transaction. Sequences that are not (or no longer) in the outbox are
// ignored.
func (db *DB) DeleteEvents(ctx context.Context, seqs []uint64) error {
	if len(seqs) == 0 {
		return ctx.Err()
	}
	return db.write(ctx, func(t *txn) error {
		for _, seq := range seqs {
			key := index.Uint64(seq)
			if _, ok := t.has(bucketOutbox, key); !ok {
				continue
			}
			if err := t.bucket(bucketOutbox).Delete(key); err != nil {
				return err
			}
			t.delta.Events--
		}
		return nil
	})
}

// DroppedEvents returns how many events the outbox cap (Options.MaxOutbox)
// has discarded undelivered over the database's life.
func (db *DB) DroppedEvents(ctx context.Context) (int64, error) {
	var n int64
	err := db.read(ctx, func(t *txn) error {
		rec, err := t.stats()
		n = rec.Dropped
		return err
	})
	return n, err
}
