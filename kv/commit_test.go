package kv

import (
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

func openTestBolt(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "c.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	return db
}

// TestCommitterPanic: an operation that panics fails alone, with an error,
// and the writer goes on committing the others.
func TestCommitterPanic(t *testing.T) {
	db := openTestBolt(t)
	c := newCommitter(db, 8, 0, commitHooks{})
	defer c.close()
	err := c.do(func(*bolt.Tx) error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "panic in write operation: boom") {
		t.Fatalf("panicking operation: %v", err)
	}
	if err := c.do(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put([]byte("k"), []byte("v")) }); err != nil {
		t.Fatalf("write after a panic: %v", err)
	}
}

// TestCommitterClose: close commits what is queued, later writes fail, and
// close may be called twice.
func TestCommitterClose(t *testing.T) {
	db := openTestBolt(t)
	c := newCommitter(db, 4, 0, commitHooks{})
	const writers = 50
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.do(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("b")).Put([]byte{byte(i)}, nil)
			})
		}()
	}
	wg.Wait()
	c.close()
	c.close()
	stored := 0
	db.View(func(tx *bolt.Tx) error { stored = tx.Bucket([]byte("b")).Stats().KeyN; return nil })
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if stored != writers {
		t.Errorf("%d keys stored, want %d", stored, writers)
	}
	if err := c.do(func(*bolt.Tx) error { return nil }); !errors.Is(err, berrors.ErrDatabaseNotOpen) {
		t.Errorf("write after close: %v", err)
	}
	if commits, ops := c.commits.Load(), c.ops.Load(); ops != writers || commits < 1 || commits > writers {
		t.Errorf("%d commits of %d operations", commits, ops)
	}
}

// TestCommitterBatchesWhileBusy: operations that queue while a commit runs
// share the next commit, without any delay configured.
func TestCommitterBatchesWhileBusy(t *testing.T) {
	db := openTestBolt(t)
	c := newCommitter(db, 64, 0, commitHooks{})
	defer c.close()
	started, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- c.do(func(*bolt.Tx) error { close(started); <-release; return nil })
	}()
	<-started
	const queued = 10
	var wg sync.WaitGroup
	for range queued {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.do(func(*bolt.Tx) error { return nil }); err != nil {
				t.Error(err)
			}
		}()
	}
	// Wait until all of them are queued behind the held writer.
	for len(c.queue) < queued {
		runtime.Gosched()
	}
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if commits := c.commits.Load(); commits != 2 {
		t.Errorf("%d commits, want 2: the held one and one for the %d queued", commits, queued)
	}
}
