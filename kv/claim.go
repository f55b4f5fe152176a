package kv

import (
	"bytes"
	"context"
	"fmt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// Claim hands out one KeyPackage of req.CipherSuite per target device, in
// one transaction. A target without Devices means every device of its DID;
// ExcludeDevices removes devices of the claimer's own DID only; a device
// named twice gets one KeyPackage. Each device gives its oldest published
// available regular KeyPackage that has not expired (expired ones met on
// the way are deleted in the same transaction), which becomes claimed by
// req.Claimer; else its last resort, if it has not expired, which is served
// and stays available; else the device is Missing, with reason Exhausted
// if it ever had KeyPackages of the suite and NoKeyPackages otherwise. A
// DID without devices is Missing (NoKeyPackages) as a whole, an unknown
// named device as itself. With AllOrNothing and anything missing, nothing
// is claimed (and no event written) and the error is a Conflict carrying
// Missing. A served last resort writes a last_resort.served event, and a
// device whose available count falls across the low watermark or to zero
// a key_packages.low or .exhausted one (see outbox.go). BadRequest for
// invalid names.
func (db *DB) Claim(ctx context.Context, req kpd.ClaimRequest) (*kpd.ClaimResult, error) {
	if err := checkClaim(req); err != nil {
		return nil, err
	}
	var res *kpd.ClaimResult
	err := db.write(ctx, func(t *txn) error {
		res = nil
		picks, missing, err := t.planClaim(req)
		if err != nil {
			return refuse(err)
		}
		if req.AllOrNothing && len(missing) > 0 {
			return refuse(&kpd.Error{Code: kpd.CodeConflict, Missing: missing,
				Message: fmt.Sprintf("all_or_nothing: %d target(s) have no KeyPackage", len(missing))})
		}
		claimed, err := t.applyClaim(req.Claimer, picks)
		if err != nil {
			return err
		}
		res = &kpd.ClaimResult{KeyPackages: claimed, Missing: missing}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func checkClaim(req kpd.ClaimRequest) error {
	if !kpd.ValidDID(req.Claimer) {
		return kpd.Errorf(kpd.CodeBadRequest, "claimer %q is not a DID", req.Claimer)
	}
	for _, target := range req.Targets {
		if !kpd.ValidDID(target.DID) {
			return kpd.Errorf(kpd.CodeBadRequest, "target %q is not a DID", target.DID)
		}
		for _, d := range target.Devices {
			if !kpd.ValidDevice(d) {
				return kpd.Errorf(kpd.CodeBadRequest, "target device %q is not a device name", d)
			}
		}
	}
	return nil
}

// claimPick is what a claim takes from one device: a KeyPackage or
// nothing (rec), the expired regular KeyPackages met before it, and the
// head its pool of the suite has once they are gone.
type claimPick struct {
	did, device string
	suite       uint16
	dev         *deviceRecord
	rec         *kpRecord
	expired     []*kpRecord
	head        uint64
}

// planClaim decides, without writing, what a claim takes from each target
// device and which targets are missing.
func (t *txn) planClaim(req kpd.ClaimRequest) ([]claimPick, []kpd.Missing, error) {
	excluded := make(map[string]bool, len(req.ExcludeDevices))
	for _, d := range req.ExcludeDevices {
		excluded[d] = true
	}
	seen := make(map[string]bool)
	var picks []claimPick
	missing := []kpd.Missing{}
	for _, target := range req.Targets {
		devices := target.Devices
		if len(devices) == 0 {
			names, err := t.deviceNames(target.DID)
			if err != nil {
				return nil, nil, err
			}
			if len(names) == 0 {
				if key := string(index.DID(target.DID)); !seen[key] {
					seen[key] = true
					missing = append(missing, kpd.Missing{DID: target.DID, Reason: kpd.CodeNoKeyPackages})
					t.note(func(o Observer) { o.ClaimMiss(kpd.CodeNoKeyPackages) })
				}
				continue
			}
			devices = names
		}
		for _, device := range devices {
			key := string(index.Device(target.DID, device))
			if seen[key] || (target.DID == req.Claimer && excluded[device]) {
				continue
			}
			seen[key] = true
			p, err := t.pick(target.DID, device, req.CipherSuite)
			if err != nil {
				return nil, nil, err
			}
			if p.rec == nil {
				reason := missingReason(p.dev, req.CipherSuite)
				missing = append(missing, kpd.Missing{DID: target.DID, Device: device, Reason: reason})
				t.note(func(o Observer) { o.ClaimMiss(reason) })
			}
			if p.rec != nil || len(p.expired) > 0 {
				picks = append(picks, p)
			}
		}
	}
	return picks, missing, nil
}

func missingReason(dev *deviceRecord, suite uint16) kpd.Code {
	if dev != nil {
		if _, had := dev.Suites[suite]; had {
			return kpd.CodeExhausted
		}
	}
	return kpd.CodeNoKeyPackages
}

// pick finds what a claim takes from one device. p.dev is nil if the device
// does not exist. The pool is the device's available regular KeyPackages of
// the suite in key (publish) order: pick reads the records from the pool's
// head on, stepping over last resorts and noting expired ones, up to the
// first it can hand out; p.head is then past every record it read, or at
// the first one it stepped over because its lifetime has not begun (publish
// accepts a not_before up to the clock-skew allowance ahead; an adder would
// refuse such a KeyPackage, so it waits, and later claims read it again).
func (t *txn) pick(did, device string, suite uint16) (claimPick, error) {
	p := claimPick{did: did, device: device, suite: suite}
	dev, err := t.device(did, device)
	if err != nil || dev == nil {
		return p, err
	}
	p.dev = dev
	prefix := index.DeviceSuite(did, device, suite)
	c := t.bucket(bucketKPs).Cursor()
	waiting := false // a KeyPackage not valid yet was stepped over: the head stays at it
	for k, v := c.Seek(index.KeyPackage(did, device, suite, dev.Suites[suite].Head)); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return p, fmt.Errorf("%s: %w", describeKey(bucketKPs, k), err)
		}
		if !waiting {
			p.head = r.Seq + 1
		}
		switch {
		case r.State != kpd.StateAvailable || r.LastResort:
		case !t.now.Before(r.NotAfter.time()):
			p.expired = append(p.expired, &r)
		case t.now.Before(r.NotBefore.time()):
			if !waiting {
				waiting, p.head = true, r.Seq
			}
		default:
			p.rec = &r
			return p, nil
		}
	}
	lr, err := t.lastResort(did, device, suite)
	if err != nil {
		return p, err
	}
	if lr != nil && t.now.Before(lr.NotAfter.time()) && !t.now.Before(lr.NotBefore.time()) {
		p.rec = lr
	}
	return p, nil
}

// applyClaim carries out planned picks: expired KeyPackages are deleted,
// regular ones claimed, last resorts served (an outbox event), and each
// pool's head moves past what the pick read.
func (t *txn) applyClaim(claimer string, picks []claimPick) ([]kpd.ClaimedKeyPackage, error) {
	out := []kpd.ClaimedKeyPackage{}
	for _, p := range picks {
		for _, r := range p.expired {
			if err := t.transition(r, nil, p.dev); err != nil {
				return nil, err
			}
		}
		p.dev.advanceHead(p.suite, p.head)
		if p.rec != nil {
			n := *p.rec
			if n.LastResort {
				n.Served++
				err := t.emit(eventRecord{Type: kpd.EventLastResortServed, DID: p.did, Device: p.device, Suite: n.Suite, Ref: n.Ref})
				if err != nil {
					return nil, err
				}
			} else {
				n.State, n.Claimer, n.ClaimedAt = kpd.StateClaimed, claimer, t.nowStamp()
			}
			if err := t.transition(p.rec, &n, p.dev); err != nil {
				return nil, err
			}
			t.note(func(o Observer) { o.Claimed(n.Suite, n.LastResort) })
			out = append(out, kpd.ClaimedKeyPackage{DID: p.did, Device: p.device, Ref: kpd.RefOf(n.Ref),
				CipherSuite: n.Suite, KeyPackage: n.Data, LastResort: n.LastResort})
		}
		if err := t.saveDevice(p.did, p.device, p.dev); err != nil {
			return nil, err
		}
	}
	return out, nil
}
