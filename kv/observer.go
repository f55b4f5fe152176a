package kv

import (
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
)

// Observer hears about the store's committed changes, typically to count
// them as metrics. Every call happens after the transaction that made the
// change committed, once per change, from the goroutine of the operation
// (CommitBatch: of the commit); a change that rolled back is never
// reported. Implementations must be safe for concurrent use and quick.
type Observer interface {
	// CommitBatch reports a committed write transaction: how many store
	// operations it carried (group commit) and how long its commit (write
	// and fsync) took.
	CommitBatch(ops int, d time.Duration)
	// Claimed reports a KeyPackage handed out by a claim.
	Claimed(suite uint16, lastResort bool)
	// Consumed reports a regular KeyPackage consumed by an ack or reject.
	Consumed(suite uint16)
	// Published reports n newly stored KeyPackages of a suite (duplicates
	// are not counted).
	Published(suite uint16, n int)
	// ClaimMiss reports a claim target that got nothing, with the reason
	// (kpd.CodeNoKeyPackages or kpd.CodeExhausted); an all_or_nothing
	// claim that failed reports its misses too.
	ClaimMiss(reason kpd.Code)
	// WelcomePosted reports a newly stored Welcome (not an idempotent
	// re-post).
	WelcomePosted()
	// DeliveryFinished reports a pending delivery that ended: acked,
	// rejected, or expired (by the sweeper, or because its device was
	// deleted).
	DeliveryFinished(outcome kpd.DeliveryState)
	// WelcomeRejected reports a device's rejection of a Welcome, by
	// reason.
	WelcomeRejected(reason kpd.Code)
}

// commitBatch counts the operations of one write transaction.
type commitBatch struct {
	tx  *bolt.Tx
	ops int
	// end is when the last operation's closure returned: the commit
	// starts right after it. took is the commit's duration.
	end  time.Time
	took time.Duration
	once sync.Once
}

// countOp records that a write closure runs in tx and returns the count of
// tx's operations, or nil without an Observer. The first closure of a
// transaction registers the OnCommit handler that times the commit; a
// transaction that rolls back never reports, and its retry is a new
// transaction. Closures run in the committer's goroutine, one at a time,
// so db.batch needs no lock of its own.
func (db *DB) countOp(tx *bolt.Tx) *commitBatch {
	if db.opts.Observer == nil {
		return nil
	}
	if db.batch == nil || db.batch.tx != tx {
		b := &commitBatch{tx: tx}
		db.batch = b
		tx.OnCommit(func() { b.took = time.Since(b.end) })
	}
	db.batch.ops++
	return db.batch
}

// report tells the Observer about the committed transaction b, once
// whichever of its operations' callers asks first: from the callers'
// goroutines, so that a slow Observer does not hold up the writer.
func (b *commitBatch) report(obs Observer) {
	b.once.Do(func() { obs.CommitBatch(b.ops, b.took) })
}

// note keeps an Observer call for after the commit.
func (t *txn) note(call func(Observer)) {
	if t.opts.Observer != nil {
		t.notes = append(t.notes, call)
	}
}

// afterCommit carries out what the committed run t of a write closure left
// for after its commit.
func (db *DB) afterCommit(t *txn) {
	if obs := db.opts.Observer; obs != nil {
		for _, call := range t.notes {
			call(obs)
		}
	}
	db.waiters.wake(t.wake)
}
