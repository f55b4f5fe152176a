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
// schema 4 moves. bbolt keeps a transaction's dirty pages in memory until
// it commits; a batch dirties about a page of kps per dozen KeyPackages
// and up to a page of key_packages and of refs per KeyPackage, some 100 MB
// at most, however large the database.
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
// with the database (bbolt holds every page a transaction dirties until
// the commit). Each transaction moves the next KeyPackages that
// device_key_packages lists, in its (DID, device, ref) order, which is
// also the order of their new keys up to the device: kps grows at its end
// and each batch dirties only its last pages. It deletes the moved records
// and their device_key_packages entries in the same transaction. Once
// that index is empty, records it did not list (there should be none) move
// the same way, in ref order. The schema version stays 3 until the final
// transaction, which sets the Heads, deletes the old buckets and records
// schema 4: a migration interrupted at any point leaves a schema 3
// database whose old buckets hold exactly what is left to move, and the
// next Open carries on from there. progress, if not nil, hears after each
// batch (see Options.MigrationProgress).
func migrateToV4(bdb *bolt.DB, progress func(moved, total int)) error {
	var total int
	err := bdb.View(func(tx *bolt.Tx) error {
		for _, name := range schema3Buckets {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("bucket %s of schema 3 missing", name)
			}
		}
		if progress != nil {
			total = tx.Bucket(bucketKeyPackagesV3).Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return err
	}
	moved, batch := 0, 0
	for ; ; batch++ {
		var left bool
		var n int
		err := bdb.Update(func(tx *bolt.Tx) error {
			moves, err := nextV4Moves(tx, migrateBatch)
			if left = len(moves) > 0; err != nil || !left {
				return err
			}
			if n, err = moveToV4(tx, moves); err != nil {
				return err
			}
			return hookMigrateCommit(batch, false)
		})
		if err != nil {
			return err
		}
		if !left {
			break
		}
		moved += n
		if progress != nil {
			progress(moved, total)
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

// v4Move is one KeyPackage left to move to schema 4: its ref, and the
// device_key_packages key that lists it (nil for a record none lists).
type v4Move struct{ ref, listed []byte }

// nextV4Moves returns up to n KeyPackages left to move to schema 4: the
// first that device_key_packages lists or, once it is empty, the first
// records of key_packages. None means the move is done.
func nextV4Moves(tx *bolt.Tx, n int) ([]v4Move, error) {
	var moves []v4Move
	c := tx.Bucket(bucketDeviceKPsV3).Cursor()
	for k, _ := c.First(); k != nil && len(moves) < n; k, _ = c.Next() {
		_, _, ref, err := index.DecodeDeviceRef(k)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", describeKey(bucketDeviceKPsV3, k), err)
		}
		moves = append(moves, v4Move{ref: bytes.Clone(ref), listed: bytes.Clone(k)})
	}
	if len(moves) > 0 {
		return moves, nil
	}
	c = tx.Bucket(bucketKeyPackagesV3).Cursor()
	for k, _ := c.First(); k != nil && len(moves) < n; k, _ = c.Next() {
		moves = append(moves, v4Move{ref: bytes.Clone(k)})
	}
	return moves, nil
}

// moveToV4 moves KeyPackages from key_packages to kps and refs, deletes
// the device_key_packages entries that list them and raises kps'
// sequence to their highest seq. It returns how many records it moved: an
// entry of device_key_packages without a record is only deleted. A record
// whose new key another one holds fails it, naming both refs.
func moveToV4(tx *bolt.Tx, moves []v4Move) (int, error) {
	fillKPs(tx)
	t := &txn{tx: tx}
	old, listed, kps, refs := tx.Bucket(bucketKeyPackagesV3), tx.Bucket(bucketDeviceKPsV3), tx.Bucket(bucketKPs), tx.Bucket(bucketRefs)
	seq, n := kps.Sequence(), 0
	for _, m := range moves {
		if m.listed != nil {
			if err := listed.Delete(m.listed); err != nil {
				return 0, err
			}
		}
		v := old.Get(m.ref)
		if v == nil {
			continue
		}
		var r kpRecord
		if err := decode(v, &r); err != nil {
			return 0, fmt.Errorf("%s: %w", describeKey(bucketKeyPackagesV3, m.ref), err)
		}
		r.Ref = m.ref
		key := r.key()
		var other kpRecord
		if ok, err := t.get(bucketKPs, key, &other); err != nil {
			return 0, err
		} else if ok {
			return 0, fmt.Errorf("KeyPackages %x and %x have the same key, %s", other.Ref, m.ref, describeKey(bucketKPs, key))
		}
		if err := t.put(bucketKPs, key, &r); err != nil {
			return 0, err
		}
		if err := refs.Put(m.ref, key); err != nil {
			return 0, err
		}
		if err := old.Delete(m.ref); err != nil {
			return 0, err
		}
		seq = max(seq, r.Seq)
		n++
	}
	return n, kps.SetSequence(seq)
}

// finishV4 ends the migration to schema 4 once every KeyPackage has moved:
// it sets the pool Heads, raises kps' sequence to key_packages' (which may
// have passed seqs whose KeyPackages are gone), deletes the buckets of
// schema 3, records schema 4 and makes sure of the store-wide counters.
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
	if err := tx.Bucket(bucketMeta).Put(keySchemaVersion, index.Uint64(schemaVersion)); err != nil {
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
