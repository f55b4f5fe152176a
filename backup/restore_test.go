package backup_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/kv"
)

// restoreSetup returns a valid snapshot (with its checksum file) of a
// database holding alice's refs, and the directory and path of a target
// database that holds other data, with that data's bytes.
func restoreSetup(t *testing.T) (snap backup.Info, refs []kpd.Ref, target string, targetContent []byte) {
	t.Helper()
	live := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	refs = publish(t, live, "did:plc:alice", 5)
	snap, err := backup.Snapshot(live, t.TempDir(), "snap.db")
	if err != nil {
		t.Fatal(err)
	}
	target = filepath.Join(t.TempDir(), "kpd.db")
	other := openDB(t, target)
	publish(t, other, "did:plc:bob", 2)
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	targetContent, err = os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	return snap, refs, target, targetContent
}

// variant copies the snapshot to a new file in its directory, applies
// change to the copy's bytes and gives it checksum (none when "").
func variant(t *testing.T, snap backup.Info, name string, change func([]byte), checksum string) string {
	t.Helper()
	b, err := os.ReadFile(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	change(b)
	path := filepath.Join(filepath.Dir(snap.Path), name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if checksum != "" {
		if err := os.WriteFile(path+backup.ChecksumSuffix, []byte(checksum), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	snap, _, target, content := restoreSetup(t)
	keep := func([]byte) {}
	good := snap.SHA256 + "  snap.db\n"
	// A second valid-looking database that breaks an invariant: a
	// KeyPackage record deleted behind its indexes' back.
	broken := variant(t, snap, "broken.db", keep, "")
	bdb, err := bolt.Open(broken, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("kps"))
		k, _ := b.Cursor().First()
		return b.Delete(k)
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken+backup.ChecksumSuffix, []byte(sha256File(t, broken)+"  broken.db\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		path string
		opts *backup.Options
		want error
	}{
		{"flipped byte", variant(t, snap, "flipped.db", func(b []byte) { b[len(b)/2] ^= 0x01 }, good), nil, backup.ErrChecksum},
		{"flipped meta byte", variant(t, snap, "meta.db", func(b []byte) { b[100] ^= 0x80 }, good), nil, backup.ErrChecksum},
		{"truncated", variant(t, snap, "short.db", keep, good), nil, backup.ErrChecksum},
		{"wrong checksum", variant(t, snap, "wrongsum.db", keep, strings.Repeat("ab", 32)+"  wrongsum.db\n"), nil, backup.ErrChecksum},
		{"malformed checksum file", variant(t, snap, "badsum.db", keep, "not a digest\n"), nil, backup.ErrChecksum},
		{"no checksum file", variant(t, snap, "nosum.db", keep, ""), nil, backup.ErrNoChecksum},
		{"not a database", variant(t, snap, "garbage.db", func(b []byte) { copy(b, strings.Repeat("x", len(b))) }, ""),
			&backup.Options{AllowMissingChecksum: true}, backup.ErrInvalid},
		{"broken invariant", broken, nil, backup.ErrInvalid},
		// bbolt has no checksums on data pages and panics on some damage.
		{"damaged pages", variant(t, snap, "pages.db", func(b []byte) {
			page := os.Getpagesize()
			for off := 2 * page; off+10 <= len(b); off += page {
				b[off+8], b[off+9] = 0x55, 0x55 // the page type
			}
		}, ""), &backup.Options{AllowMissingChecksum: true}, backup.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "truncated" {
				if err := os.Truncate(tc.path, snap.Size-4096); err != nil {
					t.Fatal(err)
				}
			}
			if err := backup.Verify(tc.path, tc.opts); !errors.Is(err, tc.want) {
				t.Errorf("Verify: err = %v, want %v", err, tc.want)
			}
			if err := backup.Restore(tc.path, target, tc.opts); !errors.Is(err, tc.want) {
				t.Errorf("Restore: err = %v, want %v", err, tc.want)
			}
			wantUnchanged(t, target, content)
			if got := dirNames(t, filepath.Dir(target)); !slices.Equal(got, []string{"kpd.db"}) {
				t.Errorf("a refused restore left %v", got)
			}
		})
	}
}

func TestRestore(t *testing.T) {
	snap, refs, target, _ := restoreSetup(t)
	if err := os.Chmod(target, 0o640); err != nil {
		t.Fatal(err)
	}
	var last, total int64
	opts := &backup.Options{Progress: func(done, size int64) { last, total = done, size }}
	if err := backup.Restore(snap.Path, target, opts); err != nil {
		t.Fatal(err)
	}
	if last != snap.Size || total != snap.Size {
		t.Errorf("last progress = %d of %d, want %d of %d", last, total, snap.Size, snap.Size)
	}
	if sum := sha256File(t, target); sum != snap.SHA256 {
		t.Errorf("restored file differs from the snapshot")
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("restored file mode = %v, %v; want the old file's 0640", fi.Mode(), err)
	}
	wantValid(t, target)
	got := states(t, target, "did:plc:alice")
	for _, ref := range refs {
		if got[ref] != kpd.StateAvailable {
			t.Errorf("restored %s is %q", ref, got[ref])
		}
	}

	// A database that does not exist yet is created; one without a
	// checksum file is accepted when the caller says so.
	fresh := filepath.Join(t.TempDir(), "new.db")
	if err := os.Remove(snap.Path + backup.ChecksumSuffix); err != nil {
		t.Fatal(err)
	}
	if err := backup.Restore(snap.Path, fresh, &backup.Options{AllowMissingChecksum: true}); err != nil {
		t.Fatal(err)
	}
	wantValid(t, fresh)
}

func TestRestoreRefusesDatabaseInUse(t *testing.T) {
	snap, refs, target, _ := restoreSetup(t)
	db, err := kv.Open(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = backup.Restore(snap.Path, target, &backup.Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, kv.ErrInUse) {
		t.Fatalf("restore onto an open database: err = %v, want kv.ErrInUse", err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("gave up after %v, before the lock timeout", waited)
	}
	if !strings.Contains(err.Error(), target) {
		t.Errorf("error %q does not name the database", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if got := states(t, target, "did:plc:bob"); len(got) != 2 {
		t.Errorf("the database in use holds %d of bob's KeyPackages after the refusal, want 2", len(got))
	}

	if err := backup.Restore(snap.Path, target, nil); err != nil {
		t.Fatalf("restore once the database is closed: %v", err)
	}
	if got := states(t, target, "did:plc:alice"); len(got) != len(refs) {
		t.Errorf("restored database holds %d of alice's KeyPackages, want %d", len(got), len(refs))
	}
}

func TestRestoreReplacesDamagedDatabase(t *testing.T) {
	snap, _, target, _ := restoreSetup(t)
	if err := os.WriteFile(target, []byte("this is not a bbolt file at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := backup.Restore(snap.Path, target, nil); err != nil {
		t.Fatal(err)
	}
	wantValid(t, target)
}
