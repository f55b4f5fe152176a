package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/kv"
)

const backupTestToken = "admin-token-of-the-backup-tests"

// runCmd runs one kpd command with the fixture's clock and returns its
// stderr and error.
func runCmd(env map[string]string, now time.Time, args ...string) (string, error) {
	m, _, stderr := newMain(env, now)
	err := m.Run(context.Background(), args)
	m.Close()
	return stderr.String(), err
}

// wantCmd fails the test unless the command succeeds.
func wantCmd(t *testing.T, now time.Time, args ...string) string {
	t.Helper()
	stderr, err := runCmd(nil, now, args...)
	if err != nil {
		t.Fatalf("kpd %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	if strings.Contains(stderr, "\r") {
		t.Errorf("kpd %s drew a progress bar on a stderr that is no terminal: %q", args[0], stderr)
	}
	return stderr
}

// inventoryOf returns the KeyPackages of alice's dev1 in the database file
// at path, opened read-only.
func inventoryOf(t *testing.T, path string) []kpd.KeyPackageInfo {
	t.Helper()
	db, err := kv.Open(path, &kv.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, list, err := db.Inventory(context.Background(), aliceDID, "dev1", true)
	if err != nil {
		t.Fatalf("inventory of %s: %v", path, err)
	}
	return list
}

func TestBackupFromServerAndRestore(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "live.db")
	srv, _, _ := newMain(nil, fx.now)
	url := startServe(t, srv, "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "dev", "--admin-token", backupTestToken)
	if _, err := client.New(url, aliceDID).Publish(ctx, "dev1", [][]byte{fx.keyPackage}); err != nil {
		t.Fatal(err)
	}
	// Without scheduled backups, a fresh server has no backup yet: the
	// metric reads 0, the stats null.
	if _, body := httpGet(t, url+"/metrics", ""); !strings.Contains(body, "\nkpd_backup_last_success_timestamp_seconds 0\n") {
		t.Errorf("metrics before any backup lack kpd_backup_last_success_timestamp_seconds 0")
	}
	if _, stats := httpGet(t, url+"/v1/admin/stats", "Bearer "+backupTestToken); !strings.Contains(stats, `"last_backup":null`) {
		t.Errorf("stats before any backup: %s", stats)
	}

	dir := t.TempDir()
	snap := filepath.Join(dir, "snap.db")
	stderr, err := runCmd(map[string]string{"KPD_ADMIN_TOKEN": backupTestToken}, fx.now, "backup", "--url", url, "-o", snap)
	if err != nil {
		t.Fatalf("backup --url: %v\n%s", err, stderr)
	}
	// A snapshot the admin route sent in full is the last backup.
	if _, stats := httpGet(t, url+"/v1/admin/stats", "Bearer "+backupTestToken); !strings.Contains(stats, `"last_backup":"`+fx.now.Format(time.RFC3339)) {
		t.Errorf("stats after a backup through the admin route: %s, want last_backup %s", stats, fx.now.Format(time.RFC3339))
	}
	if _, body := httpGet(t, url+"/metrics", ""); !strings.Contains(body, fmt.Sprintf("\nkpd_backup_last_success_timestamp_seconds %g\n", float64(fx.now.Unix()))) {
		t.Errorf("metrics after a backup lack kpd_backup_last_success_timestamp_seconds %g", float64(fx.now.Unix()))
	}
	if !strings.Contains(stderr, "wrote "+snap) || strings.Contains(stderr, "\r") {
		t.Errorf("backup output = %q", stderr)
	}
	if err := backup.Verify(snap, nil); err != nil {
		t.Fatalf("the fetched snapshot: %v", err)
	}

	// -o naming the served database itself is refused, and the server
	// keeps its file.
	_, err = runCmd(map[string]string{"KPD_ADMIN_TOKEN": backupTestToken}, fx.now, "backup", "--url", url, "-o", dbPath)
	if !errors.Is(err, kv.ErrInUse) || exitCode(err) != 1 {
		t.Errorf("backup -o the served database: err = %v, want kv.ErrInUse and exit status 1", err)
	}
	if _, err := client.New(url, aliceDID).Inventory(ctx, "dev1", false); err != nil {
		t.Errorf("the server after a refused backup over its file: %v", err)
	}

	_, err = runCmd(nil, fx.now, "backup", "--url", url, "--admin-token", "not-the-admin-token", "-o", filepath.Join(dir, "x.db"))
	var ke *kpd.Error
	if !errors.As(err, &ke) || ke.Code != kpd.CodeUnauthorized || exitCode(err) != 1 {
		t.Errorf("backup with a wrong admin token: err = %v, want Unauthorized and exit status 1", err)
	}
	if names := dirEntries(t, dir); len(names) != 2 {
		t.Errorf("backup directory holds %v, want only snap.db and its checksum", names)
	}

	_, err = runCmd(nil, fx.now, "restore", "--from", snap, "--db", dbPath, "--timeout", "100ms")
	if !errors.Is(err, kv.ErrInUse) {
		t.Errorf("restore onto the served database: err = %v, want kv.ErrInUse", err)
	}

	restored := filepath.Join(t.TempDir(), "restored.db")
	if out := wantCmd(t, fx.now, "restore", "--from", snap, "--db", restored); !strings.Contains(out, "restored "+restored) {
		t.Errorf("restore output = %q", out)
	}
	wantCmd(t, fx.now, "verify", "--db", restored)
	if list := inventoryOf(t, restored); len(list) != 1 || list[0].Ref != fx.ref {
		t.Errorf("restored inventory = %+v, want the published %s", list, fx.ref)
	}

	// A damaged snapshot is refused and the database stays as it was.
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(snap, b, 0o600); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(restored)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runCmd(nil, fx.now, "restore", "--from", snap, "--db", restored)
	if !errors.Is(err, backup.ErrChecksum) || exitCode(err) != 1 {
		t.Errorf("restore of a damaged snapshot: err = %v, want backup.ErrChecksum", err)
	}
	if after, _ := os.ReadFile(restored); !bytes.Equal(after, before) {
		t.Error("a refused restore changed the database")
	}
}

func TestBackupFromFile(t *testing.T) {
	fx := loadFixture(t)
	dbPath := filepath.Join(t.TempDir(), "kpd.db")
	wantCmd(t, fx.now, "token", "create", "--db", dbPath, "--create-db", "--did", aliceDID)

	snap := filepath.Join(t.TempDir(), "snap.db")
	wantCmd(t, fx.now, "backup", "--db", dbPath, "-o", snap)
	if err := backup.Verify(snap, nil); err != nil {
		t.Fatal(err)
	}
	db, err := kv.Open(snap, &kv.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	toks, err := db.Tokens(context.Background(), aliceDID)
	db.Close()
	if err != nil || len(toks) != 1 {
		t.Errorf("snapshot tokens = %v, %v; want the one created", toks, err)
	}
	// A second backup to the same file replaces it; one onto its own source
	// is refused.
	wantCmd(t, fx.now, "backup", "--db", dbPath, "-o", snap)
	if err := backup.Verify(snap, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dbPath)
	if _, err := runCmd(nil, fx.now, "backup", "--db", dbPath, "-o", dbPath); !errors.Is(err, kv.ErrInUse) {
		t.Errorf("backup --db F -o F: %v, want kv.ErrInUse", err)
	}
	if after, _ := os.ReadFile(dbPath); !bytes.Equal(after, before) {
		t.Error("a refused backup changed its source")
	}

	// A database in use is refused: only a server can snapshot it.
	holder, err := kv.Open(dbPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	_, err = runCmd(nil, fx.now, "backup", "--db", dbPath, "-o", filepath.Join(t.TempDir(), "busy.db"), "--timeout", "100ms")
	if !errors.Is(err, kv.ErrInUse) {
		t.Errorf("backup --db of a database in use: err = %v, want kv.ErrInUse", err)
	}
}

func TestCompactCommand(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "kpd.db")
	db, err := kv.Open(dbPath, &kv.Options{Clock: func() time.Time { return fx.now }, MaxAvailablePerSuite: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 10 {
		kps := make([]kpd.KeyPackage, 100)
		for j := range kps {
			ref, data := make([]byte, 32), make([]byte, 500)
			rand.Read(ref)
			rand.Read(data)
			kps[j] = kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: data,
				NotBefore: fx.now.Add(-time.Hour), NotAfter: fx.now.Add(time.Hour)}
		}
		device := "dev1"
		if i > 0 {
			device = "dev2"
		}
		if _, _, err := db.Publish(ctx, aliceDID, device, kps); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.DeleteDevice(ctx, aliceDID, "dev2"); err != nil {
		t.Fatal(err)
	}

	_, err = runCmd(nil, fx.now, "compact", "--db", dbPath, "--timeout", "100ms")
	if !errors.Is(err, kv.ErrInUse) {
		t.Errorf("compact of a database in use: err = %v, want kv.ErrInUse", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	before := fileSize(t, dbPath)

	out := filepath.Join(dir, "copy.db")
	wantCmd(t, fx.now, "compact", "--db", dbPath, "-o", out)
	if _, err := runCmd(nil, fx.now, "compact", "--db", dbPath, "-o", out); exitCode(err) != 1 {
		t.Errorf("compact onto an existing file: err = %v, want exit status 1", err)
	}
	if stderr := wantCmd(t, fx.now, "compact", "--db", dbPath); !strings.Contains(stderr, "compacted "+dbPath) {
		t.Errorf("compact output = %q", stderr)
	}
	if after := fileSize(t, dbPath); after >= before {
		t.Errorf("compaction in place: %d bytes, before %d", after, before)
	}
	for _, p := range []string{dbPath, out} {
		wantCmd(t, fx.now, "verify", "--db", p)
		if list := inventoryOf(t, p); len(list) != 100 {
			t.Errorf("%s: dev1 has %d KeyPackages after compaction, want 100", p, len(list))
		}
	}
}

func TestServeScheduledBackupsAndAdminRoute(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(backupTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backups := filepath.Join(dir, "backups")
	srv, _, logs := newMain(map[string]string{"KPD_BACKUP_DIR": backups}, fx.now)
	url := startServe(t, srv, "--db", filepath.Join(dir, "kpd.db"), "--listen", "127.0.0.1:0", "--auth", "dev",
		"--admin-token-file", tokenFile, "--backup-interval", "1h", "--backup-keep", "2")

	// The first scheduled snapshot is taken at start, named by the clock.
	snap := filepath.Join(backups, backup.Name(fx.now))
	deadline := time.Now().Add(10 * time.Second)
	for backup.Verify(snap, nil) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("no valid scheduled snapshot %s:\n%s", snap, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}

	var buf bytes.Buffer
	if _, err := backup.Download(context.Background(), url, backupTestToken, &buf, nil); err != nil {
		t.Errorf("admin backup with the token from --admin-token-file: %v", err)
	}
	if err := client.New(url, aliceDID).Ready(context.Background()); err != nil {
		t.Errorf("the API beside the admin routes: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if names := dirEntries(t, backups); len(names) != 2 {
		t.Errorf("backup directory after shutdown: %v", names)
	}

	// Without an admin token the admin routes are off.
	plain, _, _ := newMain(nil, fx.now)
	url = startServe(t, plain, "--db", filepath.Join(dir, "kpd.db"), "--listen", "127.0.0.1:0", "--auth", "dev")
	resp, err := http.Get(url + "/v1/admin/backup")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("admin route without an admin token: status %d, want 404", resp.StatusCode)
	}
}

func TestBackupUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(backupTestToken), 0o600); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "kpd.db")
	for _, args := range [][]string{
		{"backup", "--db", db},
		{"backup", "--url", "http://127.0.0.1:1", "-o", filepath.Join(dir, "s.db")},
		{"backup", "--db", db, "-o", filepath.Join(dir, "s.db"), "extra"},
		{"restore", "--db", db},
		{"compact", "--db", db, "extra"},
		{"serve", "--db", db, "--admin-token", "short"},
		{"serve", "--db", db, "--admin-token", backupTestToken, "--admin-token-file", tokenFile},
		{"serve", "--db", db, "--backup-dir", dir, "--backup-interval", "0"},
		{"serve", "--db", db, "--backup-dir", dir, "--backup-keep", "0"},
	} {
		if _, err := runCmd(nil, time.Now(), args...); exitCode(err) != 2 {
			t.Errorf("kpd %v: err = %v, want exit status 2", args, err)
		}
	}
	if _, err := os.Stat(db); err == nil {
		t.Error("a refused command created the database")
	}
}

func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	p := &progressBar{w: &buf, label: "backup", total: -1}
	p.update(512, 2048)
	p.update(1024, 2048) // within progressInterval: not drawn
	if got := buf.String(); got != "\rbackup [#######.......................]  25% 512 B / 2.0 KiB" {
		t.Errorf("drawn %q", got)
	}
	buf.Reset()
	p.counter(2048).Write(make([]byte, 1024))
	p.finish()
	if got := buf.String(); got != "\rbackup [##############################] 100% 2.0 KiB / 2.0 KiB\n" {
		t.Errorf("final %q", got)
	}

	var none *progressBar // no terminal: nothing happens
	none.update(1, 2)
	none.counter(2).Write([]byte{1})
	none.finish()

	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// dirEntries returns the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// kpd restore says what it verified, checks that the snapshot exists
// before its checksum file, and points at --no-checksum when that file is
// missing.
func TestRestoreMessages(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "kpd.db")
	wantCmd(t, fx.now, "token", "create", "--db", dbPath, "--create-db", "--did", aliceDID)
	snap := filepath.Join(dir, "snap.db")
	wantCmd(t, fx.now, "backup", "--db", dbPath, "-o", snap)

	restored := filepath.Join(dir, "restored.db")
	if out := wantCmd(t, fx.now, "restore", "--from", snap, "--db", restored); !strings.Contains(out, "(checksum and invariants verified)") {
		t.Errorf("restore with a checksum: %q", out)
	}
	// --no-checksum still checks a checksum file that is there.
	if out := wantCmd(t, fx.now, "restore", "--from", snap, "--db", restored, "--no-checksum"); !strings.Contains(out, "(checksum and invariants verified)") {
		t.Errorf("restore --no-checksum with a checksum file: %q", out)
	}
	if err := os.Remove(snap + backup.ChecksumSuffix); err != nil {
		t.Fatal(err)
	}
	_, err := runCmd(nil, fx.now, "restore", "--from", snap, "--db", restored)
	if !errors.Is(err, backup.ErrNoChecksum) || !strings.Contains(err.Error(), "--no-checksum") {
		t.Errorf("restore without a checksum file: err = %v, want ErrNoChecksum naming --no-checksum", err)
	}
	out := wantCmd(t, fx.now, "restore", "--from", snap, "--db", restored, "--no-checksum")
	if strings.Contains(out, "checksum and") || !strings.Contains(out, "invariants verified") || !strings.Contains(out, snap+backup.ChecksumSuffix) {
		t.Errorf("restore --no-checksum without a checksum file: %q, want it to say that only the invariants were verified", out)
	}

	missing := filepath.Join(dir, "missing.db")
	_, err = runCmd(nil, fx.now, "restore", "--from", missing, "--db", restored)
	if exitCode(err) != 1 || !errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), backup.ChecksumSuffix) {
		t.Errorf("restore --from a missing snapshot: err = %v, want one about the snapshot, not its checksum", err)
	}
}

// The commands that write beside a file name its directory when it does
// not exist, not a temporary file in it.
func TestMissingDirectoryErrors(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "kpd.db")
	wantCmd(t, fx.now, "token", "create", "--db", dbPath, "--create-db", "--did", aliceDID)
	wantCmd(t, fx.now, "backup", "--db", dbPath, "-o", filepath.Join(dir, "snap.db"))
	nodir := filepath.Join(dir, "nodir")
	for _, args := range [][]string{
		{"backup", "--db", dbPath, "-o", filepath.Join(nodir, "s.db")},
		{"compact", "--db", dbPath, "-o", filepath.Join(nodir, "c.db")},
		{"restore", "--from", filepath.Join(dir, "snap.db"), "--db", filepath.Join(nodir, "r.db")},
		{"token", "create", "--did", aliceDID, "--db", filepath.Join(nodir, "t.db"), "--create-db"},
	} {
		_, err := runCmd(nil, fx.now, args...)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), "directory "+nodir+" does not exist") || strings.Contains(err.Error(), ".tmp") {
			t.Errorf("kpd %v: err = %v, want one saying that %s does not exist", args, err, nodir)
		}
	}
}
