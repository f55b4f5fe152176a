package backup_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/backup"
)

// write is one acknowledged write of TestSnapshotWhileWriting: a published
// KeyPackage, or a claimed one.
type write struct {
	did     string
	ref     kpd.Ref
	claimed bool
}

// slowWriter stretches a snapshot over some milliseconds, so that writers
// commit while it is being copied.
type slowWriter struct{ w io.Writer }

func (s slowWriter) Write(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	return s.w.Write(p)
}

// TestSnapshotWhileWriting takes a snapshot while 8 writers publish and
// claim. Restored, it passes every invariant, holds every write acknowledged
// before the snapshot began and none begun after it ended.
func TestSnapshotWhileWriting(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "live.db"))
	const writers = 8
	dids := make([]string, writers)
	for i := range dids {
		dids[i] = fmt.Sprintf("did:plc:writer%d", i)
		publish(t, db, dids[i], 4)
	}

	var (
		mu     sync.Mutex
		acked  []write // acknowledged writes, in order
		after  []write // writes begun after the snapshot was written
		failed = make(chan error, writers)
		done   atomic.Bool // the snapshot has been written
	)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				begunAfter := done.Load()
				var ws []write
				if n%2 == 0 {
					kps := newKPs(2)
					if _, _, err := db.Publish(context.Background(), dids[i], "dev1", kps); err != nil {
						failed <- err
						return
					}
					for _, kp := range kps {
						ws = append(ws, write{did: dids[i], ref: kp.Ref})
					}
				} else {
					target := dids[(i+1+n%(writers-1))%writers]
					res, err := db.Claim(context.Background(), kpd.ClaimRequest{Claimer: dids[i], CipherSuite: 1,
						Targets: []kpd.ClaimTarget{{DID: target}}})
					if err != nil {
						failed <- err
						return
					}
					for _, kp := range res.KeyPackages {
						ws = append(ws, write{did: kp.DID, ref: kp.Ref, claimed: true})
					}
				}
				mu.Lock()
				acked = append(acked, ws...)
				if begunAfter {
					after = append(after, ws...)
				}
				mu.Unlock()
			}
		})
	}
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitFor(t, func() bool { return ackedCount() >= 200 })

	mu.Lock()
	before := slices.Clone(acked)
	mu.Unlock()
	src := backup.SourceFunc(func(w io.Writer) (int64, error) { return db.WriteSnapshot(slowWriter{w}) })
	info, err := backup.Snapshot(src, dir, "snap.db")
	done.Store(true)
	if err != nil {
		t.Fatal(err)
	}
	during := ackedCount() - len(before)
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(after) >= 50
	})
	stop()
	wg.Wait()
	close(failed)
	for err := range failed {
		t.Fatalf("writer: %v", err)
	}
	if during == 0 {
		t.Errorf("no write was acknowledged while the snapshot was taken")
	}

	restored := filepath.Join(t.TempDir(), "restored.db")
	if err := backup.Restore(info.Path, restored, nil); err != nil {
		t.Fatalf("restore: %v", err)
	}
	wantValid(t, restored)
	got := states(t, restored, dids...)
	for _, w := range before {
		switch s, ok := got[w.ref]; {
		case !ok:
			t.Errorf("%s acknowledged before the snapshot is missing", w.ref)
		case w.claimed && s != kpd.StateClaimed:
			t.Errorf("%s claimed before the snapshot is %s", w.ref, s)
		}
	}
	for _, w := range after {
		if s, ok := got[w.ref]; ok && (!w.claimed || s == kpd.StateClaimed) {
			t.Errorf("write of %s (claim %v) begun after the snapshot is in it (%s)", w.ref, w.claimed, s)
		}
	}
	t.Logf("%d writes before the snapshot, %d while it was taken, %d after", len(before), during, len(after))
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSnapshotFiles(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	refs := publish(t, db, "did:plc:alice", 3)

	name := backup.Name(t0)
	if name != "kpd-20261127T120000.000Z.db" {
		t.Errorf("Name(t0) = %q", name)
	}
	info, err := backup.Snapshot(db, dir, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != filepath.Join(dir, name) {
		t.Errorf("Path = %q", info.Path)
	}
	fi, err := os.Stat(info.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != info.Size || fi.Mode().Perm() != 0o600 {
		t.Errorf("file has %d bytes, mode %v; Info.Size = %d", fi.Size(), fi.Mode(), info.Size)
	}
	if sum := sha256File(t, info.Path); sum != info.SHA256 {
		t.Errorf("Info.SHA256 = %s, file has %s", info.SHA256, sum)
	}
	sidecar, err := os.ReadFile(info.Path + backup.ChecksumSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if want := info.SHA256 + "  " + name + "\n"; string(sidecar) != want {
		t.Errorf("checksum file = %q, want %q (sha256sum format)", sidecar, want)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{name, name + ".sha256"}) {
		t.Errorf("directory holds %v", got)
	}
	if err := backup.Verify(info.Path, nil); err != nil {
		t.Errorf("verify: %v", err)
	}
	if got := states(t, info.Path, "did:plc:alice"); len(got) != len(refs) {
		t.Errorf("snapshot holds %d KeyPackages, want %d", len(got), len(refs))
	}

	// Names sort in time order, whatever the time zone of the clock.
	later := backup.Name(t0.Add(1500 * time.Millisecond).In(time.FixedZone("east", 5*3600)))
	if later <= name || !strings.HasSuffix(later, "T120001.500Z.db") {
		t.Errorf("Name of a later time = %q, not after %q", later, name)
	}
}

func TestSnapshotFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "snap.db")
	old := []byte("previous snapshot")
	if err := os.WriteFile(existing, old, 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk on fire")
	src := backup.SourceFunc(func(w io.Writer) (int64, error) {
		n, _ := w.Write([]byte("half a snapshot"))
		return int64(n), boom
	})
	if _, err := backup.Snapshot(src, dir, "snap.db"); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the source's error", err)
	}
	wantUnchanged(t, existing, old)
	if got := dirNames(t, dir); !slices.Equal(got, []string{"snap.db"}) {
		t.Errorf("a failed snapshot left %v", got)
	}
	for _, bad := range []string{"", ".", "..", "sub/snap.db", "../snap.db"} {
		if _, err := backup.Snapshot(src, dir, bad); err == nil {
			t.Errorf("Snapshot with name %q succeeded", bad)
		}
	}
}
