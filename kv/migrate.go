package kv

import (
	"bytes"
	"fmt"

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

// migrateBatch is the most KeyPackages one transaction of the migration to
// schema 4 handles. bbolt holds the pages a transaction dirties in memory
// until it commits; a batch dirties a few thousand, whatever the size of
// the database.
var migrateBatch = 20_000

// beforeMigrateCommit, when set (by tests only), is called before each
// write transaction of the migration to schema 4 commits: with the number
// of batches this Open committed before, and final set for the last
// transaction. An error rolls the transaction back and fails Open.
var beforeMigrateCommit func(batch int, final bool) error

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
// It runs after the transaction that opened the database, in transactions
// of at most migrateBatch KeyPackages, so that its memory does not grow
// with the database. Each transaction writes to every bucket in that
// bucket's key order, so that its writes fall on few pages: writes in
// random order would dirty a page per KeyPackage, each held in memory and
// written again by batch after batch. Hence two passes:
//
//  1. Copy: the next KeyPackages that device_key_packages lists, in its
//     (DID, device, ref) order, which is also the order of their new keys
//     up to the device (kps grows at its end), are copied to kps; their
//     device_key_packages entries go.
//  2. Index: then, in ref order, the next records of key_packages get
//     their refs entry and are deleted, those that device_key_packages
//     did not list (there should be none) copied to kps first.
//
// The opening transaction recorded schema 4 and keyMigrating (see
// upgrade), so that no kpd but this one reads the file in between; the
// final transaction sets the Heads, deletes the old buckets and the mark.
// A migration interrupted at any point leaves a marked database whose
// device_key_packages lists what is left to copy and whose key_packages
// holds what is left to index, and the next Open carries on from there.
// progress, if not nil, hears after each batch (see
// Options.MigrationProgress).
func migrateToV4(bdb *bolt.DB, progress func(done, total int)) error {
	var total int
	err := bdb.View(func(tx *bolt.Tx) error {
		for _, name := range schema3Buckets {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("bucket %s of schema 3 missing", name)
			}
		}
		if progress != nil {
			total = tx.Bucket(bucketDeviceKPsV3).Stats().KeyN + tx.Bucket(bucketKeyPackagesV3).Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return err
	}
	done, batch := 0, 0
	for ; ; batch++ {
		var n int
		err := bdb.Update(func(tx *bolt.Tx) error {
			var err error
			if n, err = migrateStepV4(tx, migrateBatch); err != nil || n == 0 {
				return err
			}
			return hookMigrateCommit(batch, false)
		})
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		done += n
		if progress != nil {
			progress(done, total)
		}
	}
	return bdb.Update(func(tx *bolt.Tx) error {
		if err := finishV4(tx); err != nil {
			return err
		}
		return hookMigrateCommit(batch, true)
	})
}

// hookMigrateCommit calls beforeMigrateCommit, if set.
func hookMigrateCommit(batch int, final bool) error {
	if beforeMigrateCommit == nil {
		return nil
	}
	return beforeMigrateCommit(batch, final)
}

// migrateStepV4 runs one batch of the migration to schema 4, of at most n
// entries: it copies the records of the next entries of
// device_key_packages or, once that is empty, indexes the next records of
// key_packages. It returns the number of entries it took, 0 when both
// buckets are empty.
func migrateStepV4(tx *bolt.Tx, n int) (int, error) {
	fillKPs(tx)
	t := &txn{tx: tx}
	listed, old, kps, refs := tx.Bucket(bucketDeviceKPsV3), tx.Bucket(bucketKeyPackagesV3), tx.Bucket(bucketKPs), tx.Bucket(bucketRefs)
	seq := kps.Sequence()
	// copyRecord copies the record of ref in key_packages, if there is
	// one, to kps and returns its key there.
	copyRecord := func(ref []byte) ([]byte, error) {
		v := old.Get(ref)
		if v == nil {
			return nil, nil
		}
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", describeKey(bucketKeyPackagesV3, ref), err)
		}
		r.Ref = ref
		seq = max(seq, r.Seq)
		return r.key(), copyToV4(t, &r)
	}

	keys := firstKeys(listed, n)
	for _, k := range keys {
		_, _, ref, err := index.DecodeDeviceRef(k)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", describeKey(bucketDeviceKPsV3, k), err)
		}
		if err := listed.Delete(k); err != nil {
			return 0, err
		}
		// An entry without its record has nothing to copy.
		if _, err := copyRecord(ref); err != nil {
			return 0, err
		}
	}
	if len(keys) == 0 {
		keys = firstKeys(old, n)
		for _, ref := range keys {
			key, err := copyRecord(ref)
			if err != nil {
				return 0, err
			}
			if err := refs.Put(ref, key); err != nil {
				return 0, err
			}
			if err := old.Delete(ref); err != nil {
				return 0, err
			}
		}
	}
	return len(keys), kps.SetSequence(seq)
}

// firstKeys returns copies of the first n keys of a bucket.
func firstKeys(b *bolt.Bucket, n int) [][]byte {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < n; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return keys
}

// copyToV4 puts the KeyPackage record r into kps, unless kps holds it
// already (copied from device_key_packages, for the index pass). A record
// of another ref at its key fails it, naming both refs.
func copyToV4(t *txn, r *kpRecord) error {
	key := r.key()
	var other kpRecord
	ok, err := t.get(bucketKPs, key, &other)
	switch {
	case err != nil:
		return err
	case !ok:
		return t.put(bucketKPs, key, r)
	case !bytes.Equal(other.Ref, r.Ref):
		return fmt.Errorf("KeyPackages %x and %x have the same key, %s", other.Ref, r.Ref, describeKey(bucketKPs, key))
	}
	return nil
}

// finishV4 ends the migration to schema 4 once every KeyPackage has moved:
// it sets the pool Heads, raises kps' sequence to key_packages' (which may
// have passed seqs whose KeyPackages are gone), deletes the buckets of
// schema 3 and the mark of an unfinished migration, and makes sure of the
// store-wide counters.
func finishV4(tx *bolt.Tx) error {
	kps := tx.Bucket(bucketKPs)
	if err := kps.SetSequence(max(kps.Sequence(), tx.Bucket(bucketKeyPackagesV3).Sequence())); err != nil {
		return err
	}
	if err := setHeads(&txn{tx: tx}); err != nil {
		return err
	}
	for _, name := range schema3Buckets {
		if err := tx.DeleteBucket(name); err != nil {
			return fmt.Errorf("delete bucket %s: %w", name, err)
		}
	}
	if err := tx.Bucket(bucketMeta).Delete(keyMigrating); err != nil {
		return err
	}
	return ensureStats(tx)
}

// setHeads sets the Head of every device's pool of every suite to the
// lowest seq of its available regular KeyPackages, or else one past its
// highest seq; a suite without KeyPackages keeps its Head.
func setHeads(t *txn) error {
	c := t.bucket(bucketKPs).Cursor()
	return t.scan(bucketDevices, nil, func(k, v []byte) error {
		var d deviceRecord
		if err := decode(v, &d); err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketDevices, k), err)
		}
		did, device, err := index.DecodeDevice(k)
		if err != nil {
			return fmt.Errorf("%s: %w", describeKey(bucketDevices, k), err)
		}
		for suite := range d.Suites {
			head, err := poolHead(c, index.DeviceSuite(did, device, suite))
			if err != nil {
				return err
			}
			d.advanceHead(suite, head)
		}
		return t.put(bucketDevices, k, &d)
	})
}

// poolHead returns the Head of the pool whose KeyPackages' keys start with
// prefix, read from kps through c: the seq of its first available regular
// KeyPackage, or else one past the seq of its last KeyPackage (0 if it has
// none).
func poolHead(c *bolt.Cursor, prefix []byte) (uint64, error) {
	var head uint64
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return 0, fmt.Errorf("%s: %w", describeKey(bucketKPs, k), err)
		}
		if a, _ := counts(&r); a > 0 {
			return r.Seq, nil
		}
		head = r.Seq + 1
	}
	return head, nil
}
