package kv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// openFDs counts this process's open file descriptors on path.
func openFDs(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

// TestOpenAfterReplace: an Open that waits for the lock of a database file
// while another process (here: this test, as kpd restore does) renames a
// new file over the path opens the new file, not the replaced one.
func TestOpenAfterReplace(t *testing.T) {
	dir := t.TempDir()
	path, next := filepath.Join(dir, "kpd.db"), filepath.Join(dir, "restored.db")
	for p, device := range map[string]string{path: "old", next: "new"} {
		e := openTestFile(t, p)
		e.publishN(t, bob, device, 1, 1)
		if err := e.DB.Close(); err != nil {
			t.Fatal(err)
		}
	}
	held, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(held.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	opened := make(chan *DB, 1)
	go func() {
		db, err := Open(path, &Options{OpenTimeout: 10 * time.Second, NoSync: true})
		if err != nil {
			t.Error(err)
		}
		opened <- db
	}()
	// Open has the old file open and waits for its lock.
	for deadline := time.Now().Add(10 * time.Second); openFDs(t, path) < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Open did not open the file")
		}
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	held.Close() // releases the lock of the replaced file
	db := <-opened
	if db == nil {
		return
	}
	t.Cleanup(func() { db.Close() }) // after the verify cleanup
	e := verified(t, &env{DB: db, path: path, ctx: t.Context()})
	devices, err := e.Devices(e.ctx, bob)
	if err != nil || len(devices) != 1 || devices[0].Device != "new" {
		t.Fatalf("devices after the replacement: %+v, %v (want the new file's)", devices, err)
	}
}
