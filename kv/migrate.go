package kv

import (
	"bytes"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd/index"
)

// Buckets of schema 3 and before, which only the migrations use: the
// KeyPackage records keyed by their ref (without Ref), the KeyPackages of
// each device, and the FIFO pools of available regular KeyPackages.
// migrateToV4 replaces them by kps and refs and deletes them.
var (
	bucketKeyPackagesV3 = []byte("key_packages")        // ref → kpRecord
	bucketDeviceKPsV3   = []byte("device_key_packages") // (DID, device, ref) → ""
	bucketPoolV3        = []byte("pool")                // (DID, device, suite, seq) → ref

	schema3Buckets = [][]byte{bucketKeyPackagesV3, bucketDeviceKPsV3, bucketPoolV3}
)

// entriesIn returns the entries of one index (bucket) that indexEntries
// derives for the KeyPackage record r stored at key.
func entriesIn(bucket, key []byte, r *kpRecord) []indexEntry {
	var out []indexEntry
	for _, e := range indexEntries(key, r) {
		if bytes.Equal(e.bucket, bucket) {
			out = append(out, e)
		}
	}
	return out
}

// migrateToV2 upgrades a schema 1 database: it fills the time indexes of
// deliveries and Welcomes from the records, scanning them once, inside the
// opening transaction. A schema 1 database has no store-wide counters:
// ensureStats counts them once the migrations are done.
func migrateToV2(tx *bolt.Tx) error {
	var entries []indexEntry
	err := tx.Bucket(bucketDeliveries).ForEach(func(k, v []byte) error {
		did, device, id, err := index.DecodeDelivery(k)
		var d deliveryRecord
		if err == nil {
			err = decode(v, &d)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketDeliveries, k), err)
		}
		entries = append(entries, deliveryEntries(did, device, id, &d)...)
		return nil
	})
	if err != nil {
		return err
	}
	err = tx.Bucket(bucketWelcomes).ForEach(func(k, v []byte) error {
		var w welcomeRecord
		if err := decode(v, &w); err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketWelcomes, k), err)
		}
		entries = append(entries, welcomeEntries(string(k), &w)...)
		return nil
	})
	if err != nil {
		return err
	}
	return (&txn{tx: tx}).moveEntries(nil, entries)
}

// migrateToV3 upgrades a schema 2 database: every KeyPackage that is not
// available gets its expiry index entry (schema 2 had them for available
// ones only). The sweeper marks those already past their not_after lapsed
// on its next run.
func migrateToV3(tx *bolt.Tx) error {
	var entries []indexEntry
	err := tx.Bucket(bucketKeyPackagesV3).ForEach(func(k, v []byte) error {
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketKeyPackagesV3, k), err)
		}
		r.Ref = bytes.Clone(k)
		entries = append(entries, entriesIn(bucketExpiry, r.key(), &r)...)
		return nil
	})
	if err != nil {
		return err
	}
	return (&txn{tx: tx}).moveEntries(nil, entries)
}

// migrateToV4 upgrades a schema 3 database to the device-local layout:
// every KeyPackage record moves from key_packages, keyed by its ref, to kps,
// keyed by (DID, device, suite, seq), with its ref in the record and its
// refs entry; kps takes over key_packages' sequence, so that new seqs stay
// larger than every stored one. Each device's pool of a suite gets its
// Head: the lowest seq of its available regular KeyPackages, or one past
// the suite's highest seq if it has none. key_packages,
// device_key_packages and pool, which the layout replaces, are deleted.
// The other indexes name KeyPackages by ref, as before, and the counters
// do not change.
//
// Both new buckets are filled in key order: bbolt splits pages only when
// a transaction commits, so keys put in random order into a new bucket
// would each shift a node holding every key before them (quadratic in the
// number of KeyPackages). A first pass reads key_packages in its (ref)
// order, which writes refs in order, warms the page cache for the second
// pass and collects each record's new key; the second copies the records
// to kps in the order of their new keys.
func migrateToV4(tx *bolt.Tx) error {
	t := &txn{tx: tx}
	fillKPs(tx)
	old, kps, refs := tx.Bucket(bucketKeyPackagesV3), tx.Bucket(bucketKPs), tx.Bucket(bucketRefs)
	seq := old.Sequence()
	// By index.DeviceSuite key: the lowest seq of an available regular
	// KeyPackage, and one past the highest seq.
	lowest, end := make(map[string]uint64), make(map[string]uint64)
	type move struct{ key, ref []byte }
	var moves []move
	err := old.ForEach(func(k, v []byte) error {
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketKeyPackagesV3, k), err)
		}
		m := move{r.key(), bytes.Clone(k)}
		moves = append(moves, m)
		seq = max(seq, r.Seq)
		ds := string(index.DeviceSuite(r.DID, r.Device, r.Suite))
		end[ds] = max(end[ds], r.Seq+1)
		if a, _ := counts(&r); a > 0 {
			if low, ok := lowest[ds]; !ok || r.Seq < low {
				lowest[ds] = r.Seq
			}
		}
		return refs.Put(m.ref, m.key)
	})
	if err != nil {
		return err
	}
	slices.SortFunc(moves, func(a, b move) int { return bytes.Compare(a.key, b.key) })
	for i, m := range moves {
		if i > 0 && bytes.Equal(m.key, moves[i-1].key) {
			return fmt.Errorf("KeyPackages %x and %x have the same key, %s", moves[i-1].ref, m.ref, describeKey(bucketKPs, m.key))
		}
		var r kpRecord
		if err := decode(old.Get(m.ref), &r); err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketKeyPackagesV3, m.ref), err)
		}
		r.Ref = m.ref
		if err := t.put(bucketKPs, m.key, &r); err != nil {
			return err
		}
	}
	if err := kps.SetSequence(seq); err != nil {
		return err
	}
	if err := setHeads(t, lowest, end); err != nil {
		return err
	}
	for _, name := range schema3Buckets {
		if err := tx.DeleteBucket(name); err != nil {
			return fmt.Errorf("delete bucket %s: %w", name, err)
		}
	}
	return nil
}

// setHeads sets the Head of every device suite that has KeyPackages to its
// lowest available regular seq, or else to its end (maps by
// index.DeviceSuite key).
func setHeads(t *txn, lowest, end map[string]uint64) error {
	updated := make(map[string]*deviceRecord)
	err := t.bucket(bucketDevices).ForEach(func(k, v []byte) error {
		var d deviceRecord
		if err := decode(v, &d); err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketDevices, k), err)
		}
		did, device, err := index.DecodeDevice(k)
		if err != nil {
			return err
		}
		for suite := range d.Suites {
			ds := index.DeviceSuite(did, device, suite)
			head, ok := lowest[string(ds)]
			if !ok {
				head = end[string(ds)]
			}
			d.advanceHead(suite, head)
		}
		updated[string(k)] = &d
		return nil
	})
	if err != nil {
		return err
	}
	for k, d := range updated {
		if err := t.put(bucketDevices, []byte(k), d); err != nil {
			return err
		}
	}
	return nil
}
