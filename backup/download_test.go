package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
)

const adminToken = "admin-token-for-tests-0123456789"

// adminServer serves the admin routes of the database on loopback.
func adminServer(t *testing.T, db httpapi.AdminSnapshotter, token string) string {
	t.Helper()
	srv := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{Token: token, Snapshots: db}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestDownload(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	refs := publish(t, db, "did:plc:alice", 5)
	url := adminServer(t, db, adminToken)

	var buf bytes.Buffer
	var done, total int64
	n, err := backup.Download(context.Background(), url+"/", adminToken, &buf, func(d, tot int64) { done, total = d, tot })
	if err != nil {
		t.Fatal(err)
	}
	size, err := db.Size()
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) || n != size || done != n || total != n {
		t.Errorf("n = %d, buffer %d, database %d bytes, last progress %d of %d", n, buf.Len(), size, done, total)
	}
	path := filepath.Join(t.TempDir(), "fetched.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	wantValid(t, path)
	if got := states(t, path, "did:plc:alice"); len(got) != len(refs) {
		t.Errorf("downloaded snapshot holds %d KeyPackages, want %d", len(got), len(refs))
	}

	for _, tc := range []struct {
		name, url, token string
		code             kpd.Code
	}{
		{"wrong token", url, adminToken + "x", kpd.CodeUnauthorized},
		{"admin routes off", adminServer(t, db, ""), adminToken, kpd.CodeNotFound},
	} {
		var w bytes.Buffer
		_, err := backup.Download(context.Background(), tc.url, tc.token, &w, nil)
		var ke *kpd.Error
		if !errors.As(err, &ke) || ke.Code != tc.code {
			t.Errorf("%s: err = %v, want code %s", tc.name, err, tc.code)
		}
		if w.Len() != 0 {
			t.Errorf("%s: %d bytes written", tc.name, w.Len())
		}
	}
}

// brokenSnapshotter fails after writing part of a snapshot.
type brokenSnapshotter struct{}

func (brokenSnapshotter) WriteSnapshot(w io.Writer) (int64, error) {
	n, _ := w.Write(make([]byte, 64<<10))
	return int64(n), errors.New("read error")
}

func TestDownloadRefusesDamagedSnapshots(t *testing.T) {
	var ke *kpd.Error
	_, err := backup.Download(context.Background(), adminServer(t, brokenSnapshotter{}, adminToken), adminToken, io.Discard, nil)
	if !errors.As(err, &ke) || ke.Code != kpd.CodeInternal {
		t.Errorf("snapshot failing on the server: err = %v, want code Internal", err)
	}

	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	publish(t, db, "did:plc:alice", 2)
	var snap bytes.Buffer
	if _, err := db.WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(snap.Bytes())
	// fake serves the snapshot with the headers set by header.
	fake := func(header func(h http.Header)) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Kpd-Snapshot-Sha256", hex.EncodeToString(sum[:]))
			header(w.Header())
			w.Write(snap.Bytes())
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	for _, tc := range []struct {
		name, url string
		want      error
	}{
		{"no checksum header", fake(func(h http.Header) { h.Del("Kpd-Snapshot-Sha256") }), nil},
		{"wrong checksum", fake(func(h http.Header) { h.Set("Kpd-Snapshot-Sha256", strings.Repeat("00", 32)) }), backup.ErrChecksum},
		{"cut short", fake(func(h http.Header) { h.Set("Content-Length", strconv.Itoa(snap.Len()+4096)) }), io.ErrUnexpectedEOF},
	} {
		_, err := backup.Download(context.Background(), tc.url, adminToken, io.Discard, nil)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// The fake itself is sound: unaltered, the snapshot is accepted.
	if _, err := backup.Download(context.Background(), fake(func(http.Header) {}), adminToken, io.Discard, nil); err != nil {
		t.Errorf("unaltered: %v", err)
	}
}

func TestDownloadHonoursContext(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	url := adminServer(t, db, adminToken)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := backup.Download(ctx, url, adminToken, io.Discard, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestCompact(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kpd.db")
	db := openDB(t, path)
	var keep []kpd.Ref
	for range 20 {
		keep = append(keep, publish(t, db, "did:plc:alice", 5)...)
		publish(t, db, "did:plc:bob", 100)
	}
	if _, _, err := db.DeleteKeyPackages(context.Background(), "did:plc:bob", "dev1", nil); err != nil {
		t.Fatal(err)
	}

	if _, err := backup.Compact(path, "", &backup.Options{LockTimeout: 100 * time.Millisecond}); !errors.Is(err, kv.ErrInUse) {
		t.Fatalf("compacting a database in use: err = %v, want kv.ErrInUse", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	copyPath := filepath.Join(dir, "copy.db")
	res, err := backup.Compact(path, copyPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.After >= res.Before {
		t.Errorf("compacted copy: %d bytes from %d", res.After, res.Before)
	}
	if _, err := backup.Compact(path, copyPath, nil); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("compacting onto an existing file: err = %v", err)
	}

	res, err = backup.Compact(path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != res.After || res.After >= res.Before {
		t.Errorf("in place: %d bytes from %d, file %v", res.After, res.Before, fi.Size())
	}
	for _, p := range []string{path, copyPath} {
		wantValid(t, p)
		got := states(t, p, "did:plc:alice")
		if len(got) != len(keep) {
			t.Errorf("%s holds %d of alice's KeyPackages, want %d", p, len(got), len(keep))
		}
		for _, ref := range keep {
			if got[ref] != kpd.StateAvailable {
				t.Errorf("%s: %s is %q", p, ref, got[ref])
			}
		}
	}
	if got := dirNames(t, dir); len(got) != 2 {
		t.Errorf("directory holds %v, want the database and its copy", got)
	}

	missing := filepath.Join(dir, "missing.db")
	if _, err := backup.Compact(missing, "", nil); err == nil {
		t.Error("compacting a missing database succeeded")
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("compacting a missing database created it")
	}
}
