package backup_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
)

// The host's clock was an hour ahead (no NTP yet at boot) while two
// snapshots were taken, then NTP stepped it back. The snapshots taken after
// that are named older than the two future-dated ones; pruning keeps the
// one just written and drops the future-dated ones first.
func TestSchedulerKeepsTheNewestAfterAClockStep(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	publish(t, db, "did:plc:alice", 3)
	dir := t.TempDir()
	var reads atomic.Int64
	clock := func() time.Time {
		n := reads.Add(1)
		if n <= 2 { // clock ahead by an hour
			return t0.Add(time.Hour + time.Duration(n)*time.Second)
		}
		return t0.Add(time.Duration(n) * time.Second) // corrected
	}
	var mu sync.Mutex
	var taken []time.Time
	s := &backup.Scheduler{Source: db, Dir: dir, Interval: 5 * time.Millisecond, Keep: 2,
		Clock: clock, Logger: zerolog.Nop(),
		OnSuccess: func(at time.Time) { mu.Lock(); taken = append(taken, at); mu.Unlock() }}
	stop := testkit.Start(t, s.Run)
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(taken) >= 6 })
	stop()
	mu.Lock()
	last := taken[len(taken)-1]
	mu.Unlock()
	if _, err := os.Stat(filepath.Join(dir, backup.Name(last))); err != nil {
		t.Errorf("the most recently written snapshot %s was pruned: %v; directory: %v", backup.Name(last), err, dirNames(t, dir))
	}
}

// A snapshot whose name lies in the future (clock skew when it was taken)
// neither delays scheduled backups nor counts as the last success (the
// backup-age metric).
func TestSchedulerIgnoresSnapshotsNamedInTheFuture(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	dir := t.TempDir()
	if _, err := backup.Snapshot(db, dir, backup.Name(t0.Add(24*time.Hour))); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	s := &backup.Scheduler{Source: db, Dir: dir, Interval: 10 * time.Millisecond, Keep: 5,
		Clock: func() time.Time { return t0 }, Logger: zerolog.Nop(),
		OnSuccess: func(time.Time) { n.Add(1) }}
	stop := testkit.Start(t, s.Run)
	waitFor(t, func() bool { return n.Load() > 0 })
	stop()
	if last := s.LastSuccess(); last.After(t0) {
		t.Errorf("LastSuccess = %v, after the clock's %v", last, t0)
	}
}

// Restore onto a path where no database exists yet locks it too: a server
// that starts meanwhile waits, then serves the restored file, and what it
// acknowledges lands in the file at that path.
func TestRestoreOntoAMissingDatabaseLocksIt(t *testing.T) {
	snap, _, _, _ := restoreSetup(t)
	dbPath := filepath.Join(t.TempDir(), "kpd.db")
	opened := make(chan *kv.DB, 1)
	var once sync.Once
	err := backup.Restore(snap.Path, dbPath, &backup.Options{Progress: func(done, total int64) {
		once.Do(func() { // the server starts while restore copies
			go func() {
				srv, err := kv.Open(dbPath, &kv.Options{Clock: func() time.Time { return t0 }, OpenTimeout: 10 * time.Second})
				if err != nil {
					t.Errorf("server open: %v", err)
				}
				opened <- srv
			}()
			time.Sleep(50 * time.Millisecond) // the server is waiting for the lock
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := <-opened
	if srv == nil {
		t.Fatal("server did not start")
	}
	defer srv.Close()
	publish(t, srv, "did:plc:carol", 2) // acknowledged by the running server
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if got := states(t, dbPath, "did:plc:carol"); len(got) != 2 {
		t.Errorf("the running server's acknowledged writes are not in %s (%d of 2 KeyPackages): it writes to an unlinked file", dbPath, len(got))
	}
}

// Restore and in-place Compact of a --db that is a symlink replace the
// file it names, and the link stays.
func TestRestoreFollowsASymlink(t *testing.T) {
	snap, refs, target, _ := restoreSetup(t)
	link := filepath.Join(t.TempDir(), "kpd.db")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := backup.Restore(snap.Path, link, nil); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("restore replaced the symlink %s by a regular file", link)
	}
	if got := states(t, target, "did:plc:alice"); len(got) != len(refs) {
		t.Errorf("the database the symlink named (%s) was not restored: %d of %d snapshot KeyPackages", target, len(got), len(refs))
	}
}

func TestCompactFollowsASymlink(t *testing.T) {
	_, _, target, _ := restoreSetup(t)
	link := filepath.Join(t.TempDir(), "kpd.db")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Compact(link, "", nil); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("compact replaced the symlink %s by a regular file", link)
	}
}

// kpd backup -o (backup.Snapshot) refuses to replace the database a
// running server holds.
func TestSnapshotRefusesALiveDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpd.db")
	live := openDB(t, path)
	publish(t, live, "did:plc:alice", 1)
	src := backup.SourceFunc(live.WriteSnapshot) // what kpd backup --url fetches
	if _, err := backup.Snapshot(src, filepath.Dir(path), filepath.Base(path)); !errors.Is(err, kv.ErrInUse) {
		t.Errorf("snapshot -o %s over the database a server holds: %v, want kv.ErrInUse", path, err)
	}
	publish(t, live, "did:plc:bob", 1)
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	if got := states(t, path, "did:plc:bob"); len(got) != 1 {
		t.Errorf("write acknowledged after the backup is not in %s", path)
	}
}

// The temporary files a crash left (as large as the database or snapshot
// each was to become) are removed by the next restore or in-place compact
// of that database, and by a scheduler starting on its directory; other
// files stay.
func TestStaleTemporaryFilesRemoved(t *testing.T) {
	touch := func(paths ...string) {
		for _, p := range paths {
			if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantFiles := func(dir string, gone, kept []string) {
		t.Helper()
		for _, name := range gone {
			if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s: %v, want it removed", name, err)
			}
		}
		for _, name := range kept {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				t.Errorf("%s: %v, want it kept", name, err)
			}
		}
	}

	snap, _, target, _ := restoreSetup(t)
	dir := filepath.Dir(target)
	touch(filepath.Join(dir, ".kpd.db.123.tmp"), filepath.Join(dir, ".other.db.1.tmp"), filepath.Join(dir, "notes.tmp"))
	if err := backup.Restore(snap.Path, target, nil); err != nil {
		t.Fatal(err)
	}
	wantFiles(dir, []string{".kpd.db.123.tmp"}, []string{".other.db.1.tmp", "notes.tmp", "kpd.db"})

	touch(filepath.Join(dir, ".kpd.db.456.tmp"))
	if _, err := backup.Compact(target, "", nil); err != nil {
		t.Fatal(err)
	}
	wantFiles(dir, []string{".kpd.db.456.tmp"}, []string{".other.db.1.tmp"})

	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	backups := t.TempDir()
	touch(filepath.Join(backups, "."+backup.Name(t0)+".9.tmp"), filepath.Join(backups, "."+backup.Name(t0)+".sha256.8.tmp"),
		filepath.Join(backups, ".unrelated.7.tmp"))
	var n atomic.Int64
	s := &backup.Scheduler{Source: db, Dir: backups, Interval: time.Hour, Clock: func() time.Time { return t0 },
		Logger: zerolog.Nop(), OnSuccess: func(time.Time) { n.Add(1) }}
	stop := testkit.Start(t, s.Run)
	waitFor(t, func() bool { return n.Load() > 0 })
	stop()
	wantFiles(backups, []string{"." + backup.Name(t0) + ".9.tmp", "." + backup.Name(t0) + ".sha256.8.tmp"},
		[]string{".unrelated.7.tmp", backup.Name(t0)})
}
