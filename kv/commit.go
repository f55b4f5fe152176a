package kv

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// committer is kpd's group commit. One goroutine runs every write
// operation: it takes the first waiting operation, then every other
// operation already waiting (up to maxOps), runs them in one bbolt write
// transaction and commits them with one pair of fsyncs. Operations that
// arrive during a commit wait for the next one, so batches grow with the
// load by themselves: an idle store commits a lone write at once, and a
// busy one commits everything that queued while the disk was writing. This
// replaces bbolt's DB.Batch, whose timer starts a batch some delay after its
// first operation whether or not the writer is free: too short a delay and
// batches queue on the writer lock a few operations each, too long and the
// disk idles.
//
// Every transaction runs begin before its operations and finish after them,
// before it commits (the store-wide counters are merged there once per
// commit, see DB.write).
//
// A failing operation rolls its whole transaction back; the committer then
// runs it alone (its error goes to its caller) and re-runs the others
// together, as DB.Batch does. Operations may therefore run more than once
// and must have no effect outside the transaction.
type committer struct {
	db     *bolt.DB
	maxOps int
	// linger is how long the writer waits, after the first operation of a
	// batch, for others to join; 0 means not at all.
	linger time.Duration
	hooks  commitHooks

	// commits and ops count the committed transactions and the
	// operations they carried (WriteStats).
	commits, ops atomic.Int64

	queue chan *writeOp
	mu    sync.RWMutex // held shared while sending to queue, exclusively by close
	shut  bool
	done  chan struct{}
}

// commitHooks run in every write transaction of a committer: begin first,
// finish after the operations. An error from finish rolls the transaction
// back and goes to every operation in it.
type commitHooks struct {
	begin  func()
	finish func(*bolt.Tx) error
}

type writeOp struct {
	fn  func(*bolt.Tx) error
	err chan error
}

func newCommitter(db *bolt.DB, maxOps int, linger time.Duration, hooks commitHooks) *committer {
	c := &committer{
		db:     db,
		maxOps: maxOps,
		linger: linger,
		hooks:  hooks,
		queue:  make(chan *writeOp, maxOps),
		done:   make(chan struct{}),
	}
	go c.loop()
	return c
}

// do runs fn in a write transaction shared with concurrent callers and
// returns fn's error or the commit's. After close it returns
// bbolt's ErrDatabaseNotOpen.
func (c *committer) do(fn func(*bolt.Tx) error) error {
	op := &writeOp{fn: fn, err: make(chan error, 1)}
	c.mu.RLock()
	if c.shut {
		c.mu.RUnlock()
		return berrors.ErrDatabaseNotOpen
	}
	c.queue <- op
	c.mu.RUnlock()
	return <-op.err
}

// close lets the operations already queued commit, then stops the writer.
func (c *committer) close() {
	c.mu.Lock()
	if !c.shut {
		c.shut = true
		close(c.queue)
	}
	c.mu.Unlock()
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	batch := make([]*writeOp, 0, c.maxOps)
	for op := range c.queue {
		batch = append(batch[:0], op)
		batch = c.gather(batch)
		c.run(batch)
		clear(batch)
	}
}

// gather adds to batch the operations that are waiting, and with a linger
// those that arrive within it, up to maxOps.
func (c *committer) gather(batch []*writeOp) []*writeOp {
	var deadline <-chan time.Time
	if c.linger > 0 {
		t := time.NewTimer(c.linger)
		defer t.Stop()
		deadline = t.C
	}
	for len(batch) < c.maxOps {
		select {
		case op, ok := <-c.queue:
			if !ok {
				return batch
			}
			batch = append(batch, op)
			continue
		default:
		}
		if deadline == nil {
			return batch
		}
		select {
		case op, ok := <-c.queue:
			if !ok {
				return batch
			}
			batch = append(batch, op)
		case <-deadline:
			return batch
		}
	}
	return batch
}

// run commits batch, taking out and running alone each operation that
// fails, until the rest commits.
func (c *committer) run(batch []*writeOp) {
	for len(batch) > 0 {
		failed := -1
		err := c.update(func(tx *bolt.Tx) error {
			for i, op := range batch {
				if err := call(op.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			if err == nil {
				c.commits.Add(1)
				c.ops.Add(int64(len(batch)))
			}
			for _, op := range batch {
				op.err <- err
			}
			return
		}
		op := batch[failed]
		batch = slices.Delete(batch, failed, failed+1)
		err = c.update(func(tx *bolt.Tx) error { return call(op.fn, tx) })
		if err == nil {
			c.commits.Add(1)
			c.ops.Add(1)
		}
		op.err <- err
	}
}

// update runs ops in a write transaction between the hooks.
func (c *committer) update(ops func(*bolt.Tx) error) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		if c.hooks.begin != nil {
			c.hooks.begin()
		}
		if err := ops(tx); err != nil {
			return err
		}
		if c.hooks.finish != nil {
			return c.hooks.finish(tx)
		}
		return nil
	})
}

// call runs fn, turning a panic into an error so that one operation cannot
// take the writer (and every other caller) down with it.
func call(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in write operation: %v", p)
		}
	}()
	return fn(tx)
}
