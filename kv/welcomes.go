package kv

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// Limits of the store on Welcomes.
const (
	// DefaultPendingLimit is how many pending Welcomes PendingWelcomes
	// returns when the caller sets no limit.
	DefaultPendingLimit = 100
	// MaxRejectDetail bounds the detail a device gives when it rejects a
	// Welcome.
	MaxRejectDetail = 1024
	maxWelcomeIDLen = 128
)

func checkWelcome(w kpd.Welcome) error {
	switch {
	case len(w.Refs) > MaxWelcomeRefs:
		return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitWelcomeMembers,
			Message: fmt.Sprintf("a Welcome for %d new members; at most %d", len(w.Refs), MaxWelcomeRefs)}
	case w.ID == "" || len(w.ID) > maxWelcomeIDLen:
		return kpd.Errorf(kpd.CodeBadRequest, "invalid welcome id")
	case !kpd.ValidDID(w.Sender):
		return kpd.Errorf(kpd.CodeBadRequest, "sender %q is not a DID", w.Sender)
	case !kpd.ValidConvoID(w.ConvoID):
		return kpd.Errorf(kpd.CodeBadRequest, "convo_id must be 1-%d printable ASCII characters", kpd.MaxConvoIDLength)
	case len(w.Data) == 0:
		return kpd.Errorf(kpd.CodeBadRequest, "empty Welcome")
	}
	return nil
}

// MaxWelcomeRefs is the most new_member refs a Welcome may name: a stored
// Welcome keeps an entry for each (routed or rejected), and its record must
// stay within what the record decoder reads back (MaxArrayElements).
const MaxWelcomeRefs = 1 << 16

// PostWelcome routes a Welcome to the devices that published the
// KeyPackages its refs name. A ref is routed if it is a regular KeyPackage
// claimed by w.Sender and not yet used by another Welcome, or a last resort
// (whoever claimed it); otherwise it is rejected with UnknownKeyPackage,
// SuiteMismatch, AlreadyConsumed (consumed, or used by another Welcome) or
// NotClaimedByCaller. Each recipient device gets one pending delivery
// holding all its routed refs; the Welcome's bytes are stored once. When no
// ref routes, nothing is stored and the result has no Recipients. Posting a
// stored Welcome again (same w.ID, sender and ConvoID) returns the stored
// result, recipients with their current status, and Created false; from
// another sender, or with another ConvoID, it is a Conflict. A routed regular KeyPackage stays claimed until the device
// acknowledges or rejects the Welcome. A newly stored Welcome writes a
// welcome.pending event per recipient device and, once committed, wakes
// the devices' WaitWelcome waiters. BadRequest for invalid fields.
func (db *DB) PostWelcome(ctx context.Context, w kpd.Welcome) (*kpd.PostWelcomeResult, error) {
	if err := checkWelcome(w); err != nil {
		return nil, err
	}
	var res *kpd.PostWelcomeResult
	err := db.write(ctx, func(t *txn) error {
		res = nil
		var stored welcomeRecord
		ok, err := t.get(bucketWelcomes, []byte(w.ID), &stored)
		switch {
		case err != nil:
			return refuse(err)
		case ok && stored.Sender != w.Sender:
			return refuse(kpd.Errorf(kpd.CodeConflict, "welcome %s was posted by another DID", w.ID))
		case ok && stored.ConvoID != w.ConvoID:
			return refuse(kpd.Errorf(kpd.CodeConflict, "welcome %s was posted with convo_id %q", w.ID, stored.ConvoID))
		case ok:
			recipients, err := t.recipients(w.ID, &stored)
			if err != nil {
				return refuse(err)
			}
			res = &kpd.PostWelcomeResult{WelcomeID: w.ID, Recipients: recipients, Rejected: rejectedRefs(stored.Rejected)}
			return nil
		}
		rec, err := t.route(w)
		if err != nil {
			return refuse(err)
		}
		if len(rec.Recipients) == 0 {
			res = &kpd.PostWelcomeResult{WelcomeID: w.ID, Recipients: []kpd.Recipient{}, Rejected: rejectedRefs(rec.Rejected)}
			return nil
		}
		if err := t.storeWelcome(w.ID, rec); err != nil {
			return err
		}
		recipients, err := t.recipients(w.ID, rec)
		if err != nil {
			return err
		}
		res = &kpd.PostWelcomeResult{WelcomeID: w.ID, Recipients: recipients, Rejected: rejectedRefs(rec.Rejected), Created: true}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// route sorts a Welcome's refs, without writing, into recipient devices (in
// the order of their first ref) and rejected refs.
func (t *txn) route(w kpd.Welcome) (*welcomeRecord, error) {
	rec := &welcomeRecord{ConvoID: w.ConvoID, Sender: w.Sender, Suite: w.CipherSuite, Data: w.Data, CreatedAt: stampOf(t.now)}
	byDevice := make(map[string]int)
	seen := make(map[string]bool, len(w.Refs)) // raw refs
	seenInvalid := make(map[kpd.Ref]bool)      // refs that are not hex, each rejected once
	for _, r := range w.Refs {
		ref, ok := refBytes(r)
		if !ok {
			if !seenInvalid[r] {
				seenInvalid[r] = true
				rec.Rejected = append(rec.Rejected, rejectedEntry{Ref: r, Reason: kpd.CodeUnknownKeyPackage})
			}
			continue
		}
		if seen[string(ref)] {
			continue
		}
		seen[string(ref)] = true
		kp, err := t.keyPackage(ref)
		if err != nil {
			return nil, err
		}
		if reason := routeRefusal(kp, w, t.now); reason != "" {
			rec.Rejected = append(rec.Rejected, rejectedEntry{Ref: kpd.RefOf(ref), Reason: reason})
			continue
		}
		key := string(index.Device(kp.DID, kp.Device))
		i, ok := byDevice[key]
		if !ok {
			i = len(rec.Recipients)
			byDevice[key] = i
			rec.Recipients = append(rec.Recipients, recipientEntry{DID: kp.DID, Device: kp.Device})
		}
		rec.Recipients[i].Refs = append(rec.Recipients[i].Refs, ref)
	}
	return rec, nil
}

// routeRefusal returns why the KeyPackage kp (nil if unknown) cannot
// receive the Welcome w at now, or "" if it can.
//
// A last resort takes Welcomes from anyone while it is the device's last
// resort and its lifetime lasts. One that was replaced or deleted by its
// owner (retired: kept only until the deliveries already naming it finish)
// or whose not_after has passed is unknown to new Welcomes, as it is once
// it has left the store: the device may have dropped its key, and every
// new delivery would keep the record longer.
func routeRefusal(kp *kpRecord, w kpd.Welcome, now time.Time) kpd.Code {
	switch {
	case kp == nil || kp.Spent:
		return kpd.CodeUnknownKeyPackage
	case kp.Suite != w.CipherSuite:
		return kpd.CodeSuiteMismatch
	case kp.LastResort && (kp.Retired || !now.Before(kp.NotAfter.time())):
		return kpd.CodeUnknownKeyPackage
	case kp.LastResort:
		return ""
	case kp.State == kpd.StateConsumed || kp.Welcome != "":
		return kpd.CodeAlreadyConsumed
	case kp.State != kpd.StateClaimed || kp.Claimer != w.Sender:
		return kpd.CodeNotClaimedByCaller
	}
	return ""
}

// storeWelcome stores a routed Welcome and a pending delivery per
// recipient, and binds the routed KeyPackages to it. Each recipient gets a
// welcome.pending event and, after the commit, its WaitWelcome waiters are
// woken.
func (t *txn) storeWelcome(id string, w *welcomeRecord) error {
	if err := t.saveWelcome(id, nil, w); err != nil {
		return err
	}
	for _, r := range w.Recipients {
		dev, err := t.device(r.DID, r.Device)
		if err == nil && dev == nil {
			err = fmt.Errorf("KeyPackage of unknown device %s %s", r.DID, r.Device)
		}
		if err != nil {
			return err
		}
		for _, ref := range r.Refs {
			kp, err := t.mustKeyPackage(ref, "a routed Welcome")
			if err != nil {
				return err
			}
			n := *kp
			n.Pending++
			if !n.LastResort {
				n.Welcome = id
			}
			if err := t.transition(kp, &n, dev); err != nil {
				return err
			}
		}
		seq, err := t.bucket(bucketPending).NextSequence()
		if err != nil {
			return err
		}
		d := &deliveryRecord{Refs: r.Refs, ConvoID: w.ConvoID, Seq: seq, CreatedAt: w.CreatedAt,
			Status: deliveryStatus{State: kpd.DeliveryPending, UpdatedAt: w.CreatedAt}}
		if err := t.saveDelivery(r.DID, r.Device, id, nil, d, dev); err != nil {
			return err
		}
		if err := t.saveDevice(r.DID, r.Device, dev); err != nil {
			return err
		}
		err = t.emit(eventRecord{Type: kpd.EventWelcomePending, DID: r.DID, Device: r.Device, Suite: w.Suite,
			Ref: r.Refs[0], WelcomeID: id, ConvoID: w.ConvoID, Sender: w.Sender})
		if err != nil {
			return err
		}
		t.wake = append(t.wake, string(index.Device(r.DID, r.Device)))
	}
	t.note(func(o Observer) { o.WelcomePosted() })
	return nil
}

// recipients returns the delivery status of a stored Welcome, one entry per
// routed ref.
func (t *txn) recipients(id string, w *welcomeRecord) ([]kpd.Recipient, error) {
	out := []kpd.Recipient{}
	for _, e := range w.Recipients {
		st := e.Gone
		if st == nil {
			var d deliveryRecord
			ok, err := t.get(bucketDeliveries, index.Delivery(e.DID, e.Device, id), &d)
			if err == nil && !ok {
				err = fmt.Errorf("welcome %s: no delivery to %s %s", id, e.DID, e.Device)
			}
			if err != nil {
				return nil, err
			}
			st = &d.Status
		}
		for _, ref := range e.Refs {
			out = append(out, kpd.Recipient{DID: e.DID, Device: e.Device, Ref: kpd.RefOf(ref), Status: st.State,
				Reason: st.Reason, Detail: st.Detail, UpdatedAt: st.UpdatedAt.time()})
		}
	}
	return out, nil
}

func rejectedRefs(rs []rejectedEntry) []kpd.RejectedRef {
	out := make([]kpd.RejectedRef, len(rs))
	for i, r := range rs {
		out[i] = kpd.RejectedRef{Ref: r.Ref, Reason: r.Reason}
	}
	return out
}

// WelcomeStatus returns the delivery status of a Welcome to its sender; it
// does not write. NotFound when the Welcome does not exist or sender did not
// post it.
func (db *DB) WelcomeStatus(ctx context.Context, sender, welcomeID string) (*kpd.WelcomeStatus, error) {
	var res *kpd.WelcomeStatus
	err := db.read(ctx, func(t *txn) error {
		var w welcomeRecord
		ok, err := t.get(bucketWelcomes, []byte(welcomeID), &w)
		if err != nil {
			return err
		}
		if !ok || w.Sender != sender {
			return kpd.Errorf(kpd.CodeNotFound, "no welcome %s", welcomeID)
		}
		recipients, err := t.recipients(welcomeID, &w)
		if err != nil {
			return err
		}
		res = &kpd.WelcomeStatus{WelcomeID: welcomeID, ConvoID: w.ConvoID, CreatedAt: w.CreatedAt.time(), Recipients: recipients}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// pendingItem is one pending delivery with its Welcome.
type pendingItem struct {
	id       string
	delivery *deliveryRecord
	welcome  *welcomeRecord
}

func (p pendingItem) public() kpd.PendingWelcome {
	return kpd.PendingWelcome{WelcomeID: p.id, ConvoID: p.welcome.ConvoID, Sender: p.welcome.Sender,
		Ref: kpd.RefOf(p.delivery.Refs[0]), CipherSuite: p.welcome.Suite, Welcome: p.welcome.Data,
		CreatedAt: p.welcome.CreatedAt.time()}
}

// pending returns up to limit of the device's pending deliveries (of
// convoID, if set), oldest first.
func (t *txn) pending(did, device, convoID string, limit int) ([]pendingItem, error) {
	var out []pendingItem
	prefix := index.Device(did, device)
	c := t.bucket(bucketPending).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
		id := string(v)
		var d deliveryRecord
		ok, err := t.get(bucketDeliveries, index.Delivery(did, device, id), &d)
		if err == nil && (!ok || len(d.Refs) == 0) {
			err = fmt.Errorf("pending queue names delivery of welcome %s to %s %s, which is missing", id, did, device)
		}
		if err != nil {
			return nil, err
		}
		if convoID != "" && d.ConvoID != convoID {
			continue
		}
		var w welcomeRecord
		ok, err = t.get(bucketWelcomes, []byte(id), &w)
		if err == nil && !ok {
			err = fmt.Errorf("delivery names welcome %s, which is missing", id)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, pendingItem{id: id, delivery: &d, welcome: &w})
	}
	return out, nil
}

// PendingWelcomes lists the device's pending Welcomes (of opts.ConvoID, if
// set), oldest first, at most opts.Limit (0: DefaultPendingLimit). It does
// not write. NotFound for an unknown device.
func (db *DB) PendingWelcomes(ctx context.Context, did, device string, opts kpd.ListWelcomesOptions) ([]kpd.PendingWelcome, error) {
	if err := checkOwner(did, device); err != nil {
		return nil, err
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = DefaultPendingLimit
	}
	var out []kpd.PendingWelcome
	err := db.read(ctx, func(t *txn) error {
		if _, err := t.ownDevice(did, device); err != nil {
			return err
		}
		items, err := t.pending(did, device, opts.ConvoID, limit)
		if err != nil {
			return err
		}
		out = make([]kpd.PendingWelcome, len(items))
		for i, it := range items {
			out[i] = it.public()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Ack marks the device's delivery of a Welcome acked and consumes its
// regular KeyPackages (they leave the claimed counters and indexes; their
// metadata stays, without the KeyPackage bytes, until the retention sweep);
// a last resort stays available, and a last_resort.used event asks its
// owner to rotate it. Acking again returns the first ack's result.
// NotFound for no such delivery; Conflict if it was rejected or expired
// (see Sweep).
func (db *DB) Ack(ctx context.Context, did, device, welcomeID string) (*kpd.AckResult, error) {
	return db.settle(ctx, did, device, welcomeID, deliveryStatus{State: kpd.DeliveryAcked})
}

// Reject marks the device's delivery of a Welcome rejected with reason
// (ReasonNoMatchingKeyPackage, ReasonInvalidWelcome or ReasonOther) and
// detail, and consumes its KeyPackages as Ack does. Rejecting again returns
// the first rejection's result. NotFound for no such delivery; Conflict if
// it was acked or expired; BadRequest for another reason or a detail longer
// than MaxRejectDetail.
func (db *DB) Reject(ctx context.Context, did, device, welcomeID string, reason kpd.Code, detail string) (*kpd.AckResult, error) {
	switch reason {
	case kpd.ReasonNoMatchingKeyPackage, kpd.ReasonInvalidWelcome, kpd.ReasonOther:
	default:
		return nil, kpd.Errorf(kpd.CodeBadRequest, "reason %q: want %s, %s or %s", reason,
			kpd.ReasonNoMatchingKeyPackage, kpd.ReasonInvalidWelcome, kpd.ReasonOther)
	}
	if len(detail) > MaxRejectDetail {
		return nil, kpd.Errorf(kpd.CodeBadRequest, "detail longer than %d bytes", MaxRejectDetail)
	}
	return db.settle(ctx, did, device, welcomeID, deliveryStatus{State: kpd.DeliveryRejected, Reason: reason, Detail: detail})
}

// settle moves a pending delivery to the final state of st (acked or
// rejected); an already settled one in that state is left as it is.
func (db *DB) settle(ctx context.Context, did, device, welcomeID string, st deliveryStatus) (*kpd.AckResult, error) {
	if err := checkOwner(did, device); err != nil {
		return nil, err
	}
	var res *kpd.AckResult
	err := db.write(ctx, func(t *txn) error {
		res = nil
		var d deliveryRecord
		ok, err := t.get(bucketDeliveries, index.Delivery(did, device, welcomeID), &d)
		switch {
		case err != nil:
			return refuse(err)
		case !ok || len(d.Refs) == 0:
			return refuse(kpd.Errorf(kpd.CodeNotFound, "no welcome %s for device %q", welcomeID, device))
		case d.Status.State == st.State:
			res = &kpd.AckResult{Ref: kpd.RefOf(d.Refs[0]), ConsumedAt: d.Status.UpdatedAt.time()}
			return nil
		case d.Status.State != kpd.DeliveryPending:
			return refuse(kpd.Errorf(kpd.CodeConflict, "welcome %s is already %s", welcomeID, d.Status.State))
		}
		res, err = t.finish(did, device, welcomeID, &d, st)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// Take returns the device's oldest pending Welcome (of convoID, if set) and
// acks it in the same transaction. NotFound if there is none.
func (db *DB) Take(ctx context.Context, did, device, convoID string) (*kpd.PendingWelcome, *kpd.AckResult, error) {
	if err := checkOwner(did, device); err != nil {
		return nil, nil, err
	}
	var (
		pw  *kpd.PendingWelcome
		ack *kpd.AckResult
	)
	err := db.write(ctx, func(t *txn) error {
		pw, ack = nil, nil
		items, err := t.pending(did, device, convoID, 1)
		if err != nil {
			return refuse(err)
		}
		if len(items) == 0 {
			return refuse(kpd.Errorf(kpd.CodeNotFound, "no pending welcome for device %q", device))
		}
		it := items[0]
		if ack, err = t.finish(did, device, it.id, it.delivery, deliveryStatus{State: kpd.DeliveryAcked}); err != nil {
			return err
		}
		p := it.public()
		pw = &p
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return pw, ack, nil
}

// finish ends the device owner's pending delivery d of a Welcome with st
// (acked or rejected), as of now, and records the owner's activity.
func (t *txn) finish(did, device, welcomeID string, d *deliveryRecord, st deliveryStatus) (*kpd.AckResult, error) {
	dev, err := t.ownDevice(did, device)
	if err != nil {
		return nil, err
	}
	if err := t.endDelivery(did, device, welcomeID, d, st, dev); err != nil {
		return nil, err
	}
	t.touch(dev)
	if err := t.saveDevice(did, device, dev); err != nil {
		return nil, err
	}
	return &kpd.AckResult{Ref: kpd.RefOf(d.Refs[0]), ConsumedAt: t.now}, nil
}

// endDelivery moves the pending delivery d of a Welcome to a device (dev,
// which the caller stores) to st's final state, as of now: it leaves the
// pending queue and each KeyPackage it names is released. An ack or reject
// consumes a regular KeyPackage; expiry leaves it claimed (bound to its
// Welcome, so never routed again), to be purged by the sweeper like a claim
// that no Welcome named. A last resort stays available, or goes if it was
// retired and this was its last pending delivery; an ack or reject of a
// delivery made with it writes a last_resort.used event.
func (t *txn) endDelivery(did, device, welcomeID string, d *deliveryRecord, st deliveryStatus, dev *deviceRecord) error {
	settled := st.State != kpd.DeliveryExpired
	for _, ref := range d.Refs {
		kp, err := t.mustKeyPackage(ref, "a pending delivery")
		if err != nil {
			return err
		}
		n := *kp
		n.Pending--
		next := &n
		switch {
		case n.LastResort:
			if settled {
				err := t.emit(eventRecord{Type: kpd.EventLastResortUsed, DID: did, Device: device, Suite: n.Suite,
					Ref: ref, WelcomeID: welcomeID, ConvoID: d.ConvoID})
				if err != nil {
					return err
				}
			}
			if n.Retired && n.Pending == 0 {
				next = nil
			}
		case settled:
			n.State, n.ConsumedAt, n.Data = kpd.StateConsumed, t.nowStamp(), nil
			t.note(func(o Observer) { o.Consumed(n.Suite) })
		}
		if err := t.transition(kp, next, dev); err != nil {
			return err
		}
	}
	st.UpdatedAt = stampOf(t.now)
	ended := *d
	ended.Status = st
	if err := t.saveDelivery(did, device, welcomeID, d, &ended, dev); err != nil {
		return err
	}
	if st.State == kpd.DeliveryRejected {
		t.note(func(o Observer) { o.WelcomeRejected(st.Reason) })
	}
	return nil
}
