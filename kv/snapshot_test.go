package kv

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kpd-dir/kpd"
)

// snapshotStates returns the state of every KeyPackage of the devices, by
// ref, as db sees them.
func snapshotStates(t *testing.T, db *DB, did string, devices ...string) map[kpd.Ref]kpd.KeyPackageState {
	t.Helper()
	states := map[kpd.Ref]kpd.KeyPackageState{}
	for _, dev := range devices {
		_, list, err := db.Inventory(t.Context(), did, dev, true)
		if err != nil {
			t.Fatalf("inventory of %s: %v", dev, err)
		}
		for _, kp := range list {
			states[kp.Ref] = kp.State
		}
	}
	return states
}

// snapshotVerified fails the test unless the file at path passes VerifyFile.
func snapshotVerified(t *testing.T, path string) {
	t.Helper()
	vs, err := VerifyFile(path, 0)
	if err != nil {
		t.Fatalf("verify %s: %v", path, err)
	}
	for _, v := range vs {
		t.Errorf("verify %s: %s", path, v)
	}
}

func TestWriteSnapshotIsPointInTime(t *testing.T) {
	e := newTestDB(t)
	const did = "did:plc:snapshot"
	before := e.publishN(t, did, "dev1", 1, 20)
	claimed := e.claimOne(t, "did:plc:claimer", did, "dev1", 1)

	var buf bytes.Buffer
	n, err := e.WriteSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("wrote %d bytes, returned %d", buf.Len(), n)
	}
	if size, err := e.Size(); err != nil || size != n {
		t.Errorf("Size() = %d, %v; snapshot of an idle database has %d bytes", size, err, n)
	}
	after := e.publishN(t, did, "dev1", 1, 5)

	path := filepath.Join(t.TempDir(), "snap.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	snapshotVerified(t, path)
	snap, err := Open(path, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	states := snapshotStates(t, snap, did, "dev1")
	for _, ref := range before {
		want := kpd.StateAvailable
		if ref == claimed.Ref {
			want = kpd.StateClaimed
		}
		if states[ref] != want {
			t.Errorf("snapshot: %s is %q, want %q", ref, states[ref], want)
		}
	}
	for _, ref := range after {
		if s, ok := states[ref]; ok {
			t.Errorf("snapshot holds %s (%s), published after it was taken", ref, s)
		}
	}
}

func TestCompactToShrinksAndKeepsEverything(t *testing.T) {
	e := newTestDB(t, func(o *Options) { o.MaxAvailablePerSuite = 1000 })
	const did = "did:plc:compact"
	devices := []string{"dev1", "dev2"}
	for _, dev := range devices {
		for range 10 {
			e.publishN(t, did, dev, 1, 50)
		}
	}
	e.claimOne(t, "did:plc:claimer", did, "dev1", 1)
	tok := kpd.Token{ID: "0011223344556677", Hash: bytes.Repeat([]byte{7}, 32), DID: did, CreatedAt: t0}
	if err := e.PutToken(e.ctx, tok); err != nil {
		t.Fatal(err)
	}
	// Deleting most KeyPackages leaves free pages that only compaction
	// gives back.
	if _, _, err := e.DeleteKeyPackages(e.ctx, did, "dev2", nil); err != nil {
		t.Fatal(err)
	}
	want := snapshotStates(t, e.DB, did, devices...)

	dst := filepath.Join(t.TempDir(), "compact.db")
	if err := e.CompactTo(dst); err != nil {
		t.Fatal(err)
	}
	snapshotVerified(t, dst)
	out, err := Open(dst, &Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	got := snapshotStates(t, out, did, devices...)
	if len(got) != len(want) {
		t.Errorf("compacted copy has %d KeyPackages, want %d", len(got), len(want))
	}
	for ref, s := range want {
		if got[ref] != s {
			t.Errorf("compacted copy: %s is %q, want %q", ref, got[ref], s)
		}
	}
	srcInfo, err := os.Stat(e.path)
	if err != nil {
		t.Fatal(err)
	}
	dstInfo, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if dstInfo.Size() >= srcInfo.Size() {
		t.Errorf("compacted copy has %d bytes, the original %d", dstInfo.Size(), srcInfo.Size())
	}
	if got, err := out.TokenDID(t.Context(), tok.Hash); err != nil || got != did {
		t.Errorf("token of the copy: %q, %v; want %q", got, err, did)
	}
}

func TestCompactToRefusesNonEmptyFile(t *testing.T) {
	e := newTestDB(t)
	dst := filepath.Join(t.TempDir(), "taken.db")
	content := []byte("someone else's data")
	if err := os.WriteFile(dst, content, 0o600); err != nil {
		t.Fatal(err)
	}
	err := e.CompactTo(dst)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("CompactTo onto a non-empty file: err = %v", err)
	}
	if got, _ := os.ReadFile(dst); !slices.Equal(got, content) {
		t.Errorf("the file was changed to %q", got)
	}
}
