package backup_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/kv"
)

// t0 is the time of the tests' databases: synthetic KeyPackages are valid
// around it, whatever the wall clock says.
var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// openDB opens (creating) a database at path with the clock at t0 and room
// for many KeyPackages per device; it is closed when the test ends.
func openDB(t testing.TB, path string) *kv.DB {
	t.Helper()
	db, err := kv.Open(path, &kv.Options{
		Clock:                func() time.Time { return t0 },
		MaxAvailablePerSuite: 100000,
		// A map larger than the file, so that writers are never held up by
		// a remap while a snapshot's read transaction is open.
		InitialMmapSize: 256 << 20,
	})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// newKPs returns n synthetic KeyPackages of suite 1: the store does not
// parse them.
func newKPs(n int) []kpd.KeyPackage {
	kps := make([]kpd.KeyPackage, n)
	for i := range kps {
		ref := make([]byte, 32)
		rand.Read(ref)
		data := make([]byte, 200)
		rand.Read(data)
		kps[i] = kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: data,
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(30 * 24 * time.Hour)}
	}
	return kps
}

// publish publishes n synthetic KeyPackages for did's device dev1 and
// returns their refs.
func publish(t testing.TB, db *kv.DB, did string, n int) []kpd.Ref {
	t.Helper()
	kps := newKPs(n)
	if _, _, err := db.Publish(context.Background(), did, "dev1", kps); err != nil {
		t.Fatalf("publish: %v", err)
	}
	refs := make([]kpd.Ref, n)
	for i, kp := range kps {
		refs[i] = kp.Ref
	}
	return refs
}

// states returns the state of every KeyPackage of the DIDs' device dev1, by
// ref, in the database file at path (opened read-only).
func states(t testing.TB, path string, dids ...string) map[kpd.Ref]kpd.KeyPackageState {
	t.Helper()
	db, err := kv.Open(path, &kv.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer db.Close()
	out := map[kpd.Ref]kpd.KeyPackageState{}
	for _, did := range dids {
		_, list, err := db.Inventory(context.Background(), did, "dev1", true)
		if err != nil {
			t.Fatalf("inventory of %s in %s: %v", did, path, err)
		}
		for _, kp := range list {
			out[kp.Ref] = kp.State
		}
	}
	return out
}

// wantValid fails the test unless the database file at path passes every
// invariant check.
func wantValid(t testing.TB, path string) {
	t.Helper()
	vs, err := kv.VerifyFile(path, time.Second)
	if err != nil {
		t.Fatalf("verify %s: %v", path, err)
	}
	for _, v := range vs {
		t.Errorf("verify %s: %s", path, v)
	}
}

// sha256File returns the hex SHA-256 of a file's content.
func sha256File(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// dirNames returns the sorted names of the entries of dir.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// wantUnchanged fails the test unless the file at path still has content.
func wantUnchanged(t testing.TB, path string, content []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !bytes.Equal(got, content) {
		t.Errorf("%s was changed", path)
	}
}
