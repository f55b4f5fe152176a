package kv

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// maxRefLen bounds a KeyPackageRef: the output of the largest hash an MLS
// cipher suite uses (SHA-512).
const maxRefLen = 64

// checkOwner rejects names that are not a DID and a device name: the store
// never keys records by anything else.
func checkOwner(did, device string) error {
	if !kpd.ValidDID(did) {
		return kpd.Errorf(kpd.CodeBadRequest, "%q is not a DID", did)
	}
	if !kpd.ValidDevice(device) {
		return kpd.Errorf(kpd.CodeBadRequest, "%q is not a device name", device)
	}
	return nil
}

// refBytes decodes a ref; ok is false unless it is 1 to maxRefLen bytes of
// hex.
func refBytes(r kpd.Ref) (b []byte, ok bool) {
	b, err := r.Bytes()
	return b, err == nil && len(b) > 0 && len(b) <= maxRefLen
}

// publishRefs checks a batch before its transaction and returns its raw
// refs. Every bad item is reported (BadRequest with Items); a batch may hold
// one last resort per suite (it would replace any other at once).
func publishRefs(did, device string, kps []kpd.KeyPackage) ([][]byte, error) {
	refs := make([][]byte, len(kps))
	lastResorts := make(map[uint16]string) // suite → ref
	var bad []kpd.ItemError
	for i, kp := range kps {
		ref, ok := refBytes(kp.Ref)
		var detail string
		switch {
		case !ok:
			detail = fmt.Sprintf("ref %q is not a hex KeyPackageRef", kp.Ref)
		case kp.DID != "" && kp.DID != did, kp.Device != "" && kp.Device != device:
			detail = "KeyPackage is for another DID or device"
		case len(kp.Data) == 0:
			detail = "empty KeyPackage"
		case kp.LastResort && lastResorts[kp.CipherSuite] != "" && lastResorts[kp.CipherSuite] != string(ref):
			detail = fmt.Sprintf("a second last resort of suite %d in one batch", kp.CipherSuite)
		case kp.LastResort:
			lastResorts[kp.CipherSuite] = string(ref)
		}
		if detail != "" {
			bad = append(bad, kpd.ItemError{Index: i, Code: kpd.CodeBadRequest, Detail: detail})
		}
		refs[i] = ref
	}
	if len(bad) > 0 {
		return nil, &kpd.Error{Code: kpd.CodeBadRequest, Message: fmt.Sprintf("%d invalid KeyPackage(s)", len(bad)), Items: bad}
	}
	return refs, nil
}

// Publish stores a batch of validated KeyPackages for a device, creating the
// device if needed (QuotaExceeded beyond MaxDevicesPerDID). The batch is all
// or nothing: a ref stored for another DID or another device fails it with
// Conflict and one Items entry per such ref; more than MaxAvailablePerSuite
// available regular KeyPackages of a suite after it fails it with
// QuotaExceeded. A ref the device already has (in any state), or one
// repeated within the batch, is reported PublishDuplicate and changes
// nothing. A new last resort replaces the device's last resort of its suite;
// the old one is deleted, or, if Welcomes naming it are still pending,
// retired: no longer served nor reported as the suite's last resort (a
// listing still shows it), kept until those deliveries finish so that their
// ack still works. BadRequest for invalid
// names, refs or empty data.
func (db *DB) Publish(ctx context.Context, did, device string, kps []kpd.KeyPackage) ([]kpd.PublishResult, *kpd.Inventory, error) {
	if err := checkOwner(did, device); err != nil {
		return nil, nil, err
	}
	refs, err := publishRefs(did, device, kps)
	if err != nil {
		return nil, nil, err
	}
	var (
		results []kpd.PublishResult
		inv     *kpd.Inventory
	)
	err = db.write(ctx, func(t *txn) error {
		results, inv = nil, nil
		dev, fresh, err := t.publishCheck(did, device, kps, refs)
		if err != nil {
			return refuse(err)
		}
		if dev == nil { // empty batch for a device that does not exist
			results, inv = []kpd.PublishResult{}, &kpd.Inventory{Device: device, Suites: []kpd.SuiteInventory{}, LowWatermark: db.opts.reportedLowWatermark()}
			return nil
		}
		if results, err = t.publishApply(did, device, dev, kps, refs, fresh); err != nil {
			return err
		}
		inv, err = t.inventory(did, device, dev)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return results, inv, nil
}

// publishCheck decides, without writing, what publishing a batch does:
// which items are new (fresh), and whether the batch is refused. It returns
// the device's record (a new one if the device does not exist yet, nil if
// it does not exist and the batch is empty).
func (t *txn) publishCheck(did, device string, kps []kpd.KeyPackage, refs [][]byte) (*deviceRecord, []bool, error) {
	dev, err := t.device(did, device)
	if err != nil || (dev == nil && len(kps) == 0) {
		return nil, nil, err
	}
	if dev == nil {
		names, err := t.deviceNames(did)
		if err != nil {
			return nil, nil, err
		}
		if len(names) >= t.opts.MaxDevicesPerDID {
			return nil, nil, &kpd.Error{Code: kpd.CodeQuotaExceeded, Limit: kpd.LimitDevicesPerDID,
				Message: fmt.Sprintf("%s already has %d devices, the most allowed", did, len(names))}
		}
		dev = &deviceRecord{CreatedAt: stampOf(t.now)}
	}
	fresh := make([]bool, len(kps))
	seen := make(map[string]bool, len(kps))
	added := make(map[uint16]int)
	var conflicts []kpd.ItemError
	for i, kp := range kps {
		ref := refs[i]
		if seen[string(ref)] {
			continue
		}
		seen[string(ref)] = true
		old, err := t.keyPackage(ref)
		switch {
		case err != nil:
			return nil, nil, err
		case old == nil:
			fresh[i] = true
			if !kp.LastResort {
				added[kp.CipherSuite]++
			}
		default:
			if item, ok := conflict(i, old, did, device); ok {
				conflicts = append(conflicts, item)
			}
		}
	}
	if len(conflicts) > 0 {
		return nil, nil, &kpd.Error{Code: kpd.CodeConflict,
			Message: fmt.Sprintf("%d KeyPackage(s) already stored elsewhere", len(conflicts)), Items: conflicts}
	}
	var over []string
	for suite, n := range added {
		if have := dev.Suites[suite].Available; have+n > t.opts.MaxAvailablePerSuite {
			over = append(over, fmt.Sprintf("suite %d: %d available + %d new", suite, have, n))
		}
	}
	if len(over) > 0 {
		slices.Sort(over)
		return nil, nil, &kpd.Error{Code: kpd.CodeQuotaExceeded, Limit: kpd.LimitAvailablePerSuite,
			Message: fmt.Sprintf("more than %d available KeyPackages per suite (%s)", t.opts.MaxAvailablePerSuite, strings.Join(over, "; "))}
	}
	return dev, fresh, nil
}

// conflict returns the Conflict item of batch index i when old, the stored
// KeyPackage of its ref, belongs to another DID or device than the
// publisher's.
func conflict(i int, old *kpRecord, did, device string) (kpd.ItemError, bool) {
	switch {
	case old.DID != did:
		return kpd.ItemError{Index: i, Code: kpd.CodeConflict,
			Detail: "this KeyPackage is already stored for another DID"}, true
	case old.Device != device:
		return kpd.ItemError{Index: i, Code: kpd.CodeConflict,
			Detail: fmt.Sprintf("this KeyPackage is already stored for device %q", old.Device)}, true
	}
	return kpd.ItemError{}, false
}

// StoredElsewhere reports, without writing, the refs that are stored for
// another DID or another device than did's device: the Conflict items (Index
// is the position in refs) that a Publish of them would fail with. A ref
// that is not hex is skipped.
func (db *DB) StoredElsewhere(ctx context.Context, did, device string, refs []kpd.Ref) ([]kpd.ItemError, error) {
	var items []kpd.ItemError
	err := db.read(ctx, func(t *txn) error {
		items = nil
		for i, r := range refs {
			ref, ok := refBytes(r)
			if !ok {
				continue
			}
			old, err := t.keyPackage(ref)
			if err != nil {
				return err
			}
			if old == nil {
				continue
			}
			if item, ok := conflict(i, old, did, device); ok {
				items = append(items, item)
			}
		}
		return nil
	})
	return items, err
}

// publishApply stores the fresh items of a checked batch and the device.
func (t *txn) publishApply(did, device string, dev *deviceRecord, kps []kpd.KeyPackage, refs [][]byte, fresh []bool) ([]kpd.PublishResult, error) {
	results := make([]kpd.PublishResult, len(kps))
	published := make(map[uint16]int)
	for i, kp := range kps {
		if !fresh[i] {
			continue
		}
		published[kp.CipherSuite]++
		// A new seq is larger than any stored one, so it is at or above
		// the pool's head: the new KeyPackage joins the pool at its end.
		seq, err := t.bucket(bucketKPs).NextSequence()
		if err != nil {
			return nil, err
		}
		if kp.LastResort {
			old, err := t.lastResort(did, device, kp.CipherSuite)
			if err != nil {
				return nil, err
			}
			if old != nil {
				if err := t.removeAvailable(old, dev); err != nil {
					return nil, err
				}
			}
		}
		rec := &kpRecord{
			DID: did, Device: device, Suite: kp.CipherSuite, State: kpd.StateAvailable,
			Data: kp.Data, LastResort: kp.LastResort, PublishedAt: stampOf(t.now),
			NotBefore: stampOf(kp.NotBefore), NotAfter: stampOf(kp.NotAfter), Seq: seq, Ref: refs[i],
		}
		if err := t.transition(nil, rec, dev); err != nil {
			return nil, err
		}
		results[i] = publishResult(refs[i], rec, kpd.PublishStored)
	}
	for suite, n := range published {
		t.note(func(o Observer) { o.Published(suite, n) })
	}
	// Duplicates are described by what is stored, which for a ref repeated
	// within the batch is only known now.
	for i := range kps {
		if fresh[i] {
			continue
		}
		rec, err := t.mustKeyPackage(refs[i], "a duplicate")
		if err != nil {
			return nil, err
		}
		results[i] = publishResult(refs[i], rec, kpd.PublishDuplicate)
	}
	t.touch(dev)
	return results, t.saveDevice(did, device, dev)
}

func publishResult(ref []byte, r *kpRecord, status kpd.PublishStatus) kpd.PublishResult {
	return kpd.PublishResult{Ref: kpd.RefOf(ref), CipherSuite: r.Suite, Status: status,
		LastResort: r.LastResort, NotAfter: r.NotAfter.time()}
}

// Inventory returns a device's counts by suite and, with list, every
// KeyPackage it has (any state, retired last resorts included) in publish
// order. It does not write. NotFound for an unknown device.
func (db *DB) Inventory(ctx context.Context, did, device string, list bool) (*kpd.Inventory, []kpd.KeyPackageInfo, error) {
	if err := checkOwner(did, device); err != nil {
		return nil, nil, err
	}
	var (
		inv   *kpd.Inventory
		infos []kpd.KeyPackageInfo
	)
	err := db.read(ctx, func(t *txn) error {
		dev, err := t.ownDevice(did, device)
		if err != nil {
			return err
		}
		if inv, err = t.inventory(did, device, dev); err != nil || !list {
			return err
		}
		infos, err = t.listKeyPackages(did, device)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return inv, infos, nil
}

func (t *txn) listKeyPackages(did, device string) ([]kpd.KeyPackageInfo, error) {
	recs, err := t.deviceKeyPackages(did, device)
	if err != nil {
		return nil, err
	}
	// A spent one has left the store but for its ref.
	recs = slices.DeleteFunc(recs, func(r *kpRecord) bool { return r.Spent })
	slices.SortFunc(recs, func(a, b *kpRecord) int { return cmp.Compare(a.Seq, b.Seq) })
	infos := make([]kpd.KeyPackageInfo, len(recs))
	for i, r := range recs {
		infos[i] = kpd.KeyPackageInfo{Ref: kpd.RefOf(r.Ref), CipherSuite: r.Suite, State: r.State,
			LastResort: r.LastResort, PublishedAt: r.PublishedAt.time(), NotAfter: r.NotAfter.time()}
		if r.ClaimedAt != nil {
			at := r.ClaimedAt.time()
			infos[i].ClaimedAt = &at
		}
	}
	return infos, nil
}

// DeleteKeyPackages deletes the listed available KeyPackages of the device
// (refs == nil: every available one, last resorts included) and returns how
// many it deleted. Claimed and consumed KeyPackages, refs of other devices
// and unknown or malformed refs are left alone. A last resort that pending
// Welcomes name is retired rather than deleted (see Publish); it counts as
// deleted. NotFound for an unknown device.
func (db *DB) DeleteKeyPackages(ctx context.Context, did, device string, refs []kpd.Ref) (int, *kpd.Inventory, error) {
	if err := checkOwner(did, device); err != nil {
		return 0, nil, err
	}
	var (
		n   int
		inv *kpd.Inventory
	)
	err := db.write(ctx, func(t *txn) error {
		n, inv = 0, nil
		dev, err := t.ownDevice(did, device)
		if err != nil {
			return refuse(err)
		}
		targets, err := t.deleteTargets(did, device, refs)
		if err != nil {
			return refuse(err)
		}
		for _, ref := range targets {
			r, err := t.keyPackage(ref)
			if err != nil {
				return err
			}
			if !removable(r, did, device) {
				continue
			}
			if err := t.removeAvailable(r, dev); err != nil {
				return err
			}
			n++
		}
		t.touch(dev)
		if err := t.saveDevice(did, device, dev); err != nil {
			return err
		}
		inv, err = t.inventory(did, device, dev)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return n, inv, nil
}

// deleteTargets returns the raw refs a delete names: refs == nil means every
// KeyPackage of the device. The delete looks each up when it comes to it,
// so that a ref named twice is deleted once.
func (t *txn) deleteTargets(did, device string, refs []kpd.Ref) ([][]byte, error) {
	if refs == nil {
		recs, err := t.deviceKeyPackages(did, device)
		out := make([][]byte, len(recs))
		for i, r := range recs {
			out[i] = r.Ref
		}
		return out, err
	}
	out := make([][]byte, 0, len(refs))
	for _, r := range refs {
		if b, ok := refBytes(r); ok {
			out = append(out, b)
		}
	}
	return out, nil
}

// removable reports whether r is an available KeyPackage of the device that
// an owner's delete or sync may remove.
func removable(r *kpRecord, did, device string) bool {
	return r != nil && r.DID == did && r.Device == device && r.State == kpd.StateAvailable && !r.Retired
}

// Sync deletes the device's available KeyPackages whose refs are not in
// keep (last resorts included; one that pending Welcomes name is retired,
// see Publish) and reports them in Deleted; Unknown lists the refs of keep
// that the device does not have or has consumed (the device may drop their
// keys), in the order given; Pending lists the device's claimed KeyPackages
// and those named by a pending Welcome (the device must keep their keys).
// Claimed KeyPackages are never deleted. Deleted and Pending are in ref
// order. NotFound for an unknown device.
func (db *DB) Sync(ctx context.Context, did, device string, keep []kpd.Ref) (*kpd.SyncResult, error) {
	if err := checkOwner(did, device); err != nil {
		return nil, err
	}
	var res *kpd.SyncResult
	err := db.write(ctx, func(t *txn) error {
		res = nil
		dev, err := t.ownDevice(did, device)
		if err != nil {
			return refuse(err)
		}
		r := &kpd.SyncResult{Deleted: []kpd.Ref{}, Unknown: []kpd.Ref{}, Pending: []kpd.Ref{}}
		kept := make(map[string]bool, len(keep))
		for _, ref := range keep {
			b, ok := refBytes(ref)
			if ok && kept[string(b)] {
				continue
			}
			var rec *kpRecord
			if ok {
				kept[string(b)] = true
				if rec, err = t.keyPackage(b); err != nil {
					return err
				}
			}
			if rec == nil || rec.DID != did || rec.Device != device || rec.State == kpd.StateConsumed || rec.Spent {
				r.Unknown = append(r.Unknown, ref)
			}
		}
		recs, err := t.deviceKeyPackages(did, device)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if (rec.State == kpd.StateClaimed && !rec.Spent) || rec.Pending > 0 {
				r.Pending = append(r.Pending, kpd.RefOf(rec.Ref))
			}
			if removable(rec, did, device) && !kept[string(rec.Ref)] {
				if err := t.removeAvailable(rec, dev); err != nil {
					return err
				}
				r.Deleted = append(r.Deleted, kpd.RefOf(rec.Ref))
			}
		}
		t.touch(dev)
		if err := t.saveDevice(did, device, dev); err != nil {
			return err
		}
		if r.Inventory, err = t.inventory(did, device, dev); err != nil {
			return err
		}
		res = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// Devices lists the DID's devices by name, each with its inventory, its
// number of pending Welcomes and the time of its owner's last
// state-changing request. A DID without devices has an empty list.
func (db *DB) Devices(ctx context.Context, did string) ([]kpd.DeviceInfo, error) {
	if !kpd.ValidDID(did) {
		return nil, kpd.Errorf(kpd.CodeBadRequest, "%q is not a DID", did)
	}
	var out []kpd.DeviceInfo
	err := db.read(ctx, func(t *txn) error {
		out = []kpd.DeviceInfo{}
		err := t.scan(bucketDevices, index.DID(did), func(k, v []byte) error {
			var dev deviceRecord
			_, name, err := index.DecodeDevice(k)
			if err == nil {
				err = decode(v, &dev)
			}
			if err != nil {
				return err
			}
			suites, err := t.suites(did, name, &dev)
			out = append(out, kpd.DeviceInfo{Device: name, Suites: suites,
				PendingWelcomes: dev.Pending, LastSeen: dev.LastSeen.time()})
			return err
		})
		slices.SortFunc(out, func(a, b kpd.DeviceInfo) int { return strings.Compare(a.Device, b.Device) })
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteDevice removes a device with all its KeyPackages (claimed and
// consumed ones too) and all its Welcome deliveries. Each Welcome that named
// the device keeps the recipient with its last status, a pending one turned
// into expired, so its sender sees the device will not acknowledge it
// (until Sweep purges the Welcome). NotFound for an unknown device.
func (db *DB) DeleteDevice(ctx context.Context, did, device string) error {
	if err := checkOwner(did, device); err != nil {
		return err
	}
	return db.write(ctx, func(t *txn) error {
		dev, err := t.ownDevice(did, device)
		if err != nil {
			return refuse(err)
		}
		if err := t.dropDeliveries(did, device, dev); err != nil {
			return err
		}
		recs, err := t.deviceKeyPackages(did, device)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := t.transition(r, nil, dev); err != nil {
				return err
			}
		}
		return t.saveDevice(did, device, nil)
	})
}

// dropDeliveries deletes every delivery of a device (dev) and records its
// final status, a pending one turned into expired, in its Welcome's
// recipient list.
func (t *txn) dropDeliveries(did, device string, dev *deviceRecord) error {
	return t.scan(bucketDeliveries, index.Device(did, device), func(k, v []byte) error {
		var d deliveryRecord
		if err := decode(v, &d); err != nil {
			return err
		}
		_, _, id, err := index.DecodeDelivery(k)
		if err != nil {
			return err
		}
		final := d.Status
		if final.State == kpd.DeliveryPending {
			final = deliveryStatus{State: kpd.DeliveryExpired, UpdatedAt: stampOf(t.now)}
		}
		if err := t.saveDelivery(did, device, id, &d, nil, dev); err != nil {
			return err
		}
		return t.recipientGone(id, did, device, final)
	})
}
