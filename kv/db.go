// Package kv is kpd's Store on one bbolt file.
//
// Every Store method is one bbolt transaction: reads run in db.View, writes
// through one writer goroutine that commits concurrent writes together
// (group commit, commit.go). Each KeyPackage is a record keyed by (DID,
// device, suite, publish sequence), so that a device's KeyPackages of one
// suite are contiguous and in publish order: the available regular ones
// among them are its FIFO pool, and a claim rewrites one device-local page.
// Secondary indexes (ref to key, last-resort slots, expiry, claimed and
// consumed times) and per-device counters are updated in the same
// transaction as the record, by one function (txn.transition) that derives
// a record's index entries and counters from its state, so they cannot
// drift apart. Deliveries and Welcomes have their
// index entries derived the same way (txn.saveDelivery, txn.saveWelcome),
// and every saved record moves the store-wide counters (stats.go) by the
// difference between what it contributed before and what it contributes
// after. Verify checks records, indexes and counters against each other.
//
// Around the transactions: Sweep removes what has expired in bounded
// batches; events go to an outbox in the transaction that causes them
// (outbox.go); WaitWelcome wakes long-polls when a Welcome commits; an
// Observer hears about every committed change, for metrics.
package kv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// Defaults of Options.
const (
	DefaultOpenTimeout          = time.Second
	DefaultMaxAvailablePerSuite = 200
	DefaultMaxDevicesPerDID     = 20
	DefaultLowWatermark         = 10
	DefaultClaimRetention       = 30 * 24 * time.Hour
	DefaultConsumedRetention    = 30 * 24 * time.Hour
	DefaultWelcomeRetention     = 30 * 24 * time.Hour
	DefaultSweepBatchSize       = 1000
	DefaultMaxOutbox            = 1_000_000

	// LowWatermarkOff, as Options.LowWatermark, turns key_packages.low
	// events off.
	LowWatermarkOff = -1

	// DefaultMaxBatchSize bounds group commit (commit.go): the most write
	// operations one transaction carries. A claim touches a handful of
	// keys, so 256 operations keep a transaction to a few hundred dirty
	// pages and bound the work redone when one operation of a batch fails
	// and the others re-run.
	DefaultMaxBatchSize = 256
)

// ErrInUse is returned (wrapped, with the path) by Open when another process
// holds the database file and OpenTimeout passed.
var ErrInUse = errors.New("database is in use by another process")

// Options configure a DB. The zero value (or a nil *Options) means the
// documented defaults.
type Options struct {
	// Clock is the time source; nil means time.Now.
	Clock kpd.Clock
	// OpenTimeout is how long Open waits for the file lock; 0 means 1s.
	// On timeout Open returns an error wrapping ErrInUse.
	OpenTimeout time.Duration
	// MaxAvailablePerSuite caps a device's available regular KeyPackages
	// of one suite (last resorts do not count); 0 means 200.
	MaxAvailablePerSuite int
	// MaxDevicesPerDID caps the devices of one DID; 0 means 20.
	MaxDevicesPerDID int
	// LowWatermark is reported in Inventory.LowWatermark and is the
	// threshold of key_packages.low events; 0 means 10. A negative value
	// (LowWatermarkOff) turns key_packages.low events off and is reported
	// as 0: a device learns of an empty pool by key_packages.exhausted,
	// which stays on.
	LowWatermark int
	// ClaimRetention is how long a claimed KeyPackage waits for its
	// Welcome before Sweep purges it; 0 means 30 days. One whose Welcome
	// expired undelivered is purged on the same terms.
	ClaimRetention time.Duration
	// ConsumedRetention is how long Sweep keeps the metadata of consumed
	// KeyPackages, finished deliveries (acked, rejected, expired) and
	// Welcomes none of whose deliveries is left, counted from the
	// consumption, the end of the delivery and the end of the Welcome's
	// last delivery; 0 means 30 days.
	ConsumedRetention time.Duration
	// WelcomeRetention is how long a delivery may stay pending: Sweep
	// marks older ones expired; 0 means 30 days.
	WelcomeRetention time.Duration
	// SweepBatchSize is the most index entries one of Sweep's write
	// transactions examines (and so the most records it changes); 0
	// means 1000.
	SweepBatchSize int
	// Outbox makes every change that causes an event (kpd.Event*) write
	// it to the outbox in the same transaction; PendingEvents reads them
	// and DeleteEvents removes delivered ones. Without a consumer leave
	// it false: no event is written.
	Outbox bool
	// MaxOutbox caps the events the outbox holds; 0 means 1,000,000. A
	// transaction that takes the outbox beyond it deletes the oldest
	// events, and DroppedEvents counts them: a consumer that stays away
	// loses its oldest events, not the database its disk.
	MaxOutbox int
	// Observer hears about committed changes (for metrics); nil means
	// none.
	Observer Observer
	// MaxBatchSize is the most write operations committed together; 0
	// means DefaultMaxBatchSize.
	MaxBatchSize int
	// MaxBatchDelay is how long the writer, once it has a write to do,
	// waits for others to share its commit; 0 (the default) means not at
	// all: writes that arrive during a commit share the next one anyway,
	// so a delay only adds latency (kept for tests that need writes to
	// share a commit).
	MaxBatchDelay time.Duration
	// InitialMmapSize is the size of bbolt's first memory map; 0 means
	// bbolt's default. bbolt cannot grow its map while a read transaction
	// is open, so when the file outgrows the map during a long read (a
	// snapshot), writers wait until the read ends; a map larger than the
	// file avoids that. It reserves address space, not memory.
	InitialMmapSize int
	// MigrationProgress, if set, is called by an Open that migrates a
	// schema 3 database, after each of the transactions that move its
	// KeyPackages (at most 20,000 each, see migrateToV4). The migration
	// takes two steps per KeyPackage (copying its record, then indexing
	// its ref): done counts the steps this Open has taken so far, total
	// those that were left when it began (fewer if an earlier Open was
	// interrupted part way). The last call has done equal to total. It
	// runs on the goroutine that called Open, between two transactions.
	MigrationProgress func(done, total int)
	// NoSync skips fsync after commits: for tests and benchmarks only, a
	// crash can then lose or corrupt data.
	NoSync bool
	// ReadOnly opens the file with a shared lock and refuses writes.
	ReadOnly bool
}

// withDefaults returns a copy of o (which may be nil) with zero fields set
// to their defaults.
func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	setDefault(&r.OpenTimeout, DefaultOpenTimeout)
	setDefault(&r.MaxAvailablePerSuite, DefaultMaxAvailablePerSuite)
	setDefault(&r.MaxDevicesPerDID, DefaultMaxDevicesPerDID)
	if r.LowWatermark == 0 {
		r.LowWatermark = DefaultLowWatermark
	}
	setDefault(&r.ClaimRetention, DefaultClaimRetention)
	setDefault(&r.ConsumedRetention, DefaultConsumedRetention)
	setDefault(&r.WelcomeRetention, DefaultWelcomeRetention)
	setDefault(&r.SweepBatchSize, DefaultSweepBatchSize)
	setDefault(&r.MaxOutbox, DefaultMaxOutbox)
	setDefault(&r.MaxBatchSize, DefaultMaxBatchSize)
	return r
}

// reportedLowWatermark is the low watermark inventories report: 0 when
// low events are off.
func (o *Options) reportedLowWatermark() int { return max(o.LowWatermark, 0) }

func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// DB is the bbolt Store. It is safe for concurrent use.
type DB struct {
	bolt    *bolt.DB
	commit  *committer
	opts    Options
	waiters waiters
	// batch is the write transaction whose operations are being counted
	// for Observer.CommitBatch; only write closures, which bbolt runs one
	// at a time, touch it.
	batch *commitBatch
	// pending is what the operations of the write transaction in progress
	// change in the store-wide counters, merged into meta/stats once
	// before it commits (finishCommit); only the committer's goroutine
	// touches it.
	pending statsRecord
}

var _ kpd.Store = (*DB)(nil)

// Buckets. Keys are built by package index; values are CBOR records
// (records.go) or, for pure indexes, a ref, a key or nothing.
var (
	bucketMeta       = []byte("meta")            // name → value
	bucketKPs        = []byte("kps")             // (DID, device, suite, seq) → kpRecord; every state
	bucketRefs       = []byte("refs")            // ref → kps key; every state
	bucketLastResort = []byte("last_resort")     // (DID, device, suite) → ref; current last resort
	bucketExpiry     = []byte("expiry")          // (not_after, ref) → ""; until lapsed
	bucketClaimed    = []byte("claimed")         // (claimed_at, ref) → ""; claimed
	bucketConsumed   = []byte("consumed")        // (consumed_at, ref) → ""; consumed
	bucketDevices    = []byte("devices")         // (DID, device) → deviceRecord
	bucketWelcomes   = []byte("welcomes")        // welcome id → welcomeRecord
	bucketDeliveries = []byte("deliveries")      // (DID, device, welcome id) → deliveryRecord
	bucketPending    = []byte("pending")         // (DID, device, seq) → welcome id; pending deliveries
	bucketTokens     = []byte("tokens")          // SHA-256 → tokenRecord
	bucketSince      = []byte("pending_since")   // (created_at, delivery key) → ""; pending deliveries
	bucketFinished   = []byte("finished")        // (updated_at, delivery key) → ""; finished deliveries
	bucketOrphans    = []byte("orphan_welcomes") // (last delivery's end, welcome id) → ""; Welcomes without deliveries
	bucketOutbox     = []byte("outbox")          // seq → eventRecord

	allBuckets = [][]byte{
		bucketMeta, bucketKPs, bucketRefs, bucketLastResort,
		bucketExpiry, bucketClaimed, bucketConsumed, bucketDevices, bucketWelcomes,
		bucketDeliveries, bucketPending, bucketTokens, bucketSince, bucketFinished,
		bucketOrphans, bucketOutbox,
	}

	keySchemaVersion = []byte("schema_version")
	// keyMigrating marks a database whose migration to schema 4 has begun
	// and not finished (migrate.go); its value is the version it left, 3.
	keyMigrating = []byte("migrating")
	keyStats     = []byte("stats") // statsRecord
)

// schemaVersion is the layout this code reads and writes. Version 2 added
// the store-wide counters, the outbox and the time indexes of deliveries
// and Welcomes that the sweeper walks; version 3 keeps claimed and consumed
// KeyPackages in the expiry index until they lapse (see indexEntries);
// version 4 keys KeyPackages by device, suite and publish sequence, which
// makes them their own FIFO pools (migrate.go); version 5 keeps a claimed
// or consumed KeyPackage purged before its not_after as a spent ref
// (kpRecord.Spent), which an older kpd would count and route as a live
// one. Schema 5 has the layout of 4: the step from 4 writes nothing but the
// version, so that an older kpd refuses the file.
const schemaVersion = 5

// migration upgrades a database from one schema version to the next, inside
// the transaction that opens it.
type migration func(tx *bolt.Tx) error

// migrations[v] upgrades schema version v to v+1 inside the opening
// transaction: Open runs every step a database needs up to schema 3 in
// that one transaction, so it gets there completely or not at all. The
// upgrade from schema 3 to 4 moves every KeyPackage and runs in bounded
// transactions of its own after the opening one (migrateToV4).
var migrations = map[uint64]migration{1: migrateToV2, 2: migrateToV3, 4: func(*bolt.Tx) error { return nil }}

// Open opens (creating if needed) the database at path. It creates the
// buckets, records the schema version and runs pending migrations. If
// another process holds the file for OpenTimeout, the error wraps ErrInUse.
//
// A read-only Open refuses a database of another schema version. A
// read-write Open of a schema 3 database moves its KeyPackages to the
// schema 4 layout in transactions of at most 20,000 KeyPackages (reporting
// to Options.MigrationProgress). Its first transaction records the current
// schema version (schemaVersion) with a mark that the migration is
// unfinished, so that an older kpd
// refuses the file (its schema is newer) and a read-only Open refuses it
// too; if the migration is interrupted, every committed transaction's
// KeyPackages stay moved and the next read-write Open carries on from
// there.
func Open(path string, opts *Options) (*DB, error) {
	o := opts.withDefaults()
	bdb, err := openBolt(path, o)
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w (lock not obtained within %s)", path, ErrInUse, o.OpenTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if o.ReadOnly {
		err = bdb.View(checkSchema)
	} else {
		err = upgrade(bdb, o.MigrationProgress)
	}
	if err != nil {
		bdb.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db := &DB{bolt: bdb, opts: o}
	db.commit = newCommitter(bdb, o.MaxBatchSize, o.MaxBatchDelay,
		commitHooks{begin: db.beginCommit, finish: db.finishCommit})
	return db, nil
}

// upgrade brings a database opened read-write to the current schema: the
// opening transaction creates missing buckets and runs the migrations up
// to schema 3; a schema 3 database is then marked as migrating to schema 4
// (keyMigrating) and migrates in transactions of its own, as does one
// whose migration an earlier Open began. The last transaction makes sure
// of the store-wide counters (ensureStats).
func upgrade(bdb *bolt.DB, progress func(done, total int)) error {
	var v uint64
	migrating := false
	err := bdb.Update(func(tx *bolt.Tx) error {
		var err error
		if v, err = initSchema(tx, schemaVersion, migrations); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if v == 3 {
			if err := meta.Put(keyMigrating, index.Uint64(v)); err != nil {
				return err
			}
			v = schemaVersion
			if err := meta.Put(keySchemaVersion, index.Uint64(v)); err != nil {
				return err
			}
		}
		if migrating = meta.Get(keyMigrating) != nil; migrating || v != schemaVersion {
			return nil
		}
		return ensureStats(tx)
	})
	switch {
	case err != nil:
		return err
	case v != schemaVersion:
		return fmt.Errorf("no migration from schema version %d", v)
	case !migrating:
		return nil
	}
	if err := migrateToV4(bdb, progress); err != nil {
		return fmt.Errorf("migrate schema 3 to 4: %w", err)
	}
	return nil
}

// openBolt opens the bbolt file at path. bbolt locks the file it opened,
// waiting for the lock if another process holds it; kpd restore and kpd
// compact rename a new file over path while they hold the old file's lock.
// An Open that waited through that got the lock of a file nobody will see
// again, so openBolt checks that path still names the file it locked and
// otherwise opens path anew (a few times at most).
func openBolt(path string, o Options) (*bolt.DB, error) {
	for attempt := 1; ; attempt++ {
		var opened *os.File
		bdb, err := bolt.Open(path, 0o600, &bolt.Options{
			Timeout:         o.OpenTimeout,
			ReadOnly:        o.ReadOnly,
			NoSync:          o.NoSync,
			InitialMmapSize: o.InitialMmapSize,
			FreelistType:    bolt.FreelistMapType,
			OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
				f, err := os.OpenFile(name, flag, perm)
				opened = f
				return f, err
			},
		})
		if err != nil {
			return nil, err
		}
		same, err := sameFile(opened, path)
		if err == nil && same {
			return bdb, nil
		}
		bdb.Close()
		if err != nil {
			return nil, err
		}
		if attempt == 3 {
			return nil, fmt.Errorf("the file was replaced while kpd opened it, %d times", attempt)
		}
	}
}

// sameFile reports whether path names the open file f.
func sameFile(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// initSchema creates missing buckets and brings the schema version of a
// database towards target, running steps until it reaches target or a
// version steps cannot upgrade. It returns the version the database is at
// then: target for a new database.
func initSchema(tx *bolt.Tx, target uint64, steps map[uint64]migration) (uint64, error) {
	fresh := tx.Bucket(bucketMeta) == nil
	if k, _ := tx.Cursor().First(); fresh && k != nil {
		return 0, fmt.Errorf("not a kpd database (has bucket %q but no %q)", k, bucketMeta)
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return 0, fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	meta := tx.Bucket(bucketMeta)
	if fresh {
		return target, meta.Put(keySchemaVersion, index.Uint64(target))
	}
	from, err := readSchemaVersion(tx)
	if err != nil {
		return 0, err
	}
	if from > target {
		return 0, fmt.Errorf("schema version %d is newer than this kpd's %d", from, target)
	}
	v := from
	for ; v < target && steps[v] != nil; v++ {
		if err := steps[v](tx); err != nil {
			return 0, fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	if v == from {
		return v, nil
	}
	return v, meta.Put(keySchemaVersion, index.Uint64(v))
}

// checkSchema verifies, without writing, that a database is kpd's and of the
// current schema version.
func checkSchema(tx *bolt.Tx) error {
	v, err := readSchemaVersion(tx)
	if err != nil {
		return err
	}
	if v != schemaVersion {
		return fmt.Errorf("schema version %d, this kpd reads %d (open it read-write once to migrate)", v, schemaVersion)
	}
	if tx.Bucket(bucketMeta).Get(keyMigrating) != nil {
		return errors.New("the migration to schema 4 is unfinished (open it read-write once to finish it)")
	}
	return nil
}

func readSchemaVersion(tx *bolt.Tx) (uint64, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, fmt.Errorf("not a kpd database (no %q bucket)", bucketMeta)
	}
	v, err := index.DecodeUint64(meta.Get(keySchemaVersion))
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}

// Close closes the database; queued writes commit first. It first closes
// the channels of every WaitWelcome waiter, so long-polls return. Writes
// after Close fail.
func (db *DB) Close() error {
	db.waiters.close()
	db.commit.close()
	return db.bolt.Close()
}

// Path returns the database file's path.
func (db *DB) Path() string { return db.bolt.Path() }

// Ready reports whether the database is open and writable, by committing an
// empty write transaction (for /readyz). A read-only database is not ready.
func (db *DB) Ready(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return db.commit.do(func(*bolt.Tx) error { return nil })
}

// Size returns the size of the database in bytes.
func (db *DB) Size() (int64, error) {
	var size int64
	err := db.bolt.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		return nil
	})
	return size, err
}

// refusal carries a domain error detected before a write closure wrote
// anything; see refuse.
type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }

// refuse wraps a domain error that a write closure found before writing
// anything. write then commits the (empty) closure and returns err to its
// caller, instead of failing the whole batch, which would make bbolt roll
// back and re-run every other operation of the batch. A closure that has
// written must return its error plainly so that its writes roll back.
func refuse(err error) error { return refusal{err} }

// write runs fn in a write transaction shared with concurrent writers (one
// commit for the batch, see committer). fn may run more than once (a batch
// re-runs without an operation that failed, and that operation alone), so it must
// reset whatever it reports at its start and have no effect outside tx.
// What fn leaves for after the commit (Observer calls, WaitWelcome wake-ups,
// see txn) happens once, for its last run, and only if that run committed.
// Its changes to the store-wide counters are merged into meta/stats with
// those of the other operations of its commit, once, before the commit:
// one read, merge and write of meta/stats per commit instead of one per
// operation.
func (db *DB) write(ctx context.Context, fn func(t *txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		t       *txn
		batch   *commitBatch
		refused error
	)
	err := db.commit.do(func(tx *bolt.Tx) error {
		if batch = db.countOp(tx); batch != nil {
			defer func() { batch.end = time.Now() }()
		}
		t, refused = db.newTxn(tx), nil
		err := fn(t)
		var r refusal
		if errors.As(err, &r) {
			refused = r.err
			return nil
		}
		if err != nil {
			return err
		}
		db.pending.merge(&t.delta)
		return nil
	})
	if err != nil {
		return err
	}
	if batch != nil {
		batch.report(db.opts.Observer)
	}
	db.afterCommit(t)
	return refused
}

// beginCommit and finishCommit are the committer's hooks: a write
// transaction's counter changes start at nothing and are merged into
// meta/stats (with the outbox cap enforced) before it commits.
func (db *DB) beginCommit() { db.pending = statsRecord{} }

func (db *DB) finishCommit(tx *bolt.Tx) error {
	t := db.newTxn(tx)
	t.delta = db.pending
	return t.flush()
}

// WriteStats are totals of the store's group commits since Open.
type WriteStats struct {
	// Commits counts the committed write transactions of Store
	// operations, and Operations the operations they carried.
	Commits, Operations int64
	// PagesWritten counts the pages bbolt wrote for every write
	// transaction, meta pages included: a commit's cost on the disk
	// grows with it (docs/BENCHMARKS.md).
	PagesWritten int64
}

// WriteStats returns the totals of group commit since Open.
func (db *DB) WriteStats() WriteStats {
	st := db.bolt.Stats()
	return WriteStats{
		Commits:      db.commit.commits.Load(),
		Operations:   db.commit.ops.Load(),
		PagesWritten: st.TxStats.GetWrite(),
	}
}

// read runs fn in a read-only transaction.
func (db *DB) read(ctx context.Context, fn func(t *txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return db.bolt.View(func(tx *bolt.Tx) error { return fn(db.newTxn(tx)) })
}

func (db *DB) newTxn(tx *bolt.Tx) *txn {
	if tx.Writable() {
		fillKPs(tx)
	}
	return &txn{tx: tx, now: db.opts.Clock.Now().UTC(), opts: &db.opts}
}

// kpsFillPercent is how full bbolt fills the pages of the kps bucket when
// it splits them, instead of its default of half. A device's KeyPackages
// are appended at the end of its key range, so the first page of a split
// gets no more keys: at one half the bucket would be twice as large and a
// level deeper, one more page in every claim's commit. The rest of a page
// takes the growth of claimed records.
const kpsFillPercent = 0.9

// fillKPs sets the fill of the kps bucket for the write transaction tx.
func fillKPs(tx *bolt.Tx) { tx.Bucket(bucketKPs).FillPercent = kpsFillPercent }
