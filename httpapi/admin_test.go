package httpapi_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
)

const adminTestToken = "an-admin-token-of-reasonable-length"

// adminTestNow is the clock of the admin tests' databases.
var adminTestNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// adminTestServer serves NewAdmin over a database in t.TempDir() on
// loopback, spooling into spoolDir, and returns its URL, the database and
// the log sink.
func adminTestServer(t *testing.T, token, spoolDir string) (string, *kv.DB, *testkit.SyncBuffer) {
	t.Helper()
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &kv.Options{
		Clock: func() time.Time { return adminTestNow }, MaxAvailablePerSuite: 1000, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	logs := &testkit.SyncBuffer{}
	srv := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{Token: token, Snapshots: db, SpoolDir: spoolDir,
		Logger: zerolog.New(logs)}))
	t.Cleanup(srv.Close)
	return srv.URL, db, logs
}

// adminPublish publishes n synthetic KeyPackages of size bytes for did's
// device dev1. It may run outside the test's goroutine.
func adminPublish(t *testing.T, db *kv.DB, did string, n, size int) {
	t.Helper()
	kps := make([]kpd.KeyPackage, n)
	for i := range kps {
		ref, data := make([]byte, 32), make([]byte, size)
		rand.Read(ref)
		rand.Read(data)
		kps[i] = kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: data,
			NotBefore: adminTestNow.Add(-time.Hour), NotAfter: adminTestNow.Add(24 * time.Hour)}
	}
	if _, _, err := db.Publish(context.Background(), did, "dev1", kps); err != nil {
		t.Errorf("publish: %v", err)
	}
}

// adminWantProblem checks that resp is a problem document with status and
// code.
func adminWantProblem(t *testing.T, resp *http.Response, status int, code kpd.Code) (detail string) {
	t.Helper()
	var p struct {
		Status int      `json:"status"`
		Code   kpd.Code `json:"code"`
		Detail string   `json:"detail"`
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type = %q", resp.Request.URL.Path, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatalf("problem document: %v", err)
	}
	if resp.StatusCode != status || p.Status != status || p.Code != code {
		t.Errorf("%s %s: status %d (document %d), code %q; want %d %q (%s)",
			resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, p.Status, p.Code, status, code, p.Detail)
	}
	return p.Detail
}

func TestAdminBackupNeedsToken(t *testing.T) {
	url, _, logs := adminTestServer(t, adminTestToken, "")
	for _, auth := range []string{"", "Bearer", "Bearer " + adminTestToken + "x", "Bearer " + adminTestToken[1:],
		"Basic " + adminTestToken} {
		resp := testkit.Do(t, http.MethodGet, url+httpapi.AdminBackupPath, auth)
		adminWantProblem(t, resp, http.StatusUnauthorized, kpd.CodeUnauthorized)
		if resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("401 for %q without a WWW-Authenticate challenge", auth)
		}
	}
	adminWantProblem(t, testkit.Do(t, http.MethodPost, url+httpapi.AdminBackupPath, "Bearer "+adminTestToken),
		http.StatusMethodNotAllowed, kpd.CodeBadRequest)
	adminWantProblem(t, testkit.Do(t, http.MethodGet, url+"/v1/admin/nothing", "Bearer "+adminTestToken),
		http.StatusNotFound, kpd.CodeNotFound)
	if strings.Contains(logs.String(), adminTestToken[1:]) {
		t.Errorf("the admin token is in the logs:\n%s", logs)
	}
}

func TestAdminRoutesOffWithoutToken(t *testing.T) {
	url, _, _ := adminTestServer(t, "", "")
	for _, auth := range []string{"", "Bearer ", "Bearer anything"} {
		detail := adminWantProblem(t, testkit.Do(t, http.MethodGet, url+httpapi.AdminBackupPath, auth), http.StatusNotFound, kpd.CodeNotFound)
		if !strings.Contains(detail, "admin routes are off") || !strings.Contains(detail, "--admin-token-file") {
			t.Errorf("detail %q does not say the admin routes are off and how to turn them on", detail)
		}
	}
}

// TestAdminBackupWhileServing reads the first bytes of a snapshot, lets
// writers commit and another backup request be refused while the transfer
// is paused, then reads the rest: the snapshot is complete, matches its
// Content-Length and checksum header, passes every invariant and holds
// nothing written after it was taken. The database is larger than loopback
// socket buffers hold, so the transfer is still under way meanwhile.
func TestAdminBackupWhileServing(t *testing.T) {
	spool := t.TempDir()
	url, db, logs := adminTestServer(t, adminTestToken, spool)
	const kps = 400
	for range kps / 50 {
		adminPublish(t, db, "did:plc:alice", 50, 60<<10)
	}
	resp := testkit.Do(t, http.MethodGet, url+httpapi.AdminBackupPath, "Bearer "+adminTestToken)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	if resp.ContentLength < kps*60<<10 {
		t.Fatalf("Content-Length = %d", resp.ContentLength)
	}
	h := sha256.New()
	out, err := os.Create(filepath.Join(t.TempDir(), "snap.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	body := io.TeeReader(resp.Body, io.MultiWriter(h, out))
	if _, err := io.CopyN(io.Discard, body, 8192); err != nil {
		t.Fatal(err)
	}

	published := make(chan struct{})
	go func() {
		defer close(published)
		for range 5 {
			adminPublish(t, db, "did:plc:bob", 1, 100)
		}
	}()
	select {
	case <-published:
	case <-time.After(10 * time.Second):
		t.Fatal("writers blocked while a snapshot was being sent")
	}
	busy := testkit.Do(t, http.MethodGet, url+httpapi.AdminBackupPath, "Bearer "+adminTestToken)
	adminWantProblem(t, busy, http.StatusServiceUnavailable, kpd.CodeUnavailable)
	if busy.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}

	rest, err := io.Copy(io.Discard, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := 8192 + rest; got != resp.ContentLength {
		t.Errorf("received %d bytes, Content-Length %d", got, resp.ContentLength)
	}
	if want := resp.Header.Get(httpapi.AdminSnapshotSHA256Header); want != hex.EncodeToString(h.Sum(nil)) {
		t.Errorf("checksum header %q does not match the body", want)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	vs, err := kv.VerifyFile(out.Name(), time.Second)
	if err != nil || len(vs) > 0 {
		t.Fatalf("snapshot: %v %v", vs, err)
	}
	snap, err := kv.Open(out.Name(), &kv.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	inv, _, err := snap.Inventory(context.Background(), "did:plc:alice", "dev1", false)
	if err != nil || len(inv.Suites) != 1 || inv.Suites[0].Available != kps {
		t.Errorf("snapshot inventory = %+v, %v; want %d available", inv, err, kps)
	}
	if _, _, err := snap.Inventory(context.Background(), "did:plc:bob", "dev1", false); kpd.ErrorCode(err) != kpd.CodeNotFound {
		t.Errorf("snapshot has bob's device, created after the snapshot was taken (err = %v)", err)
	}

	var line map[string]any
	for l := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		if err := json.Unmarshal([]byte(l), &line); err == nil && line["route"] == httpapi.AdminBackupPath && line["status"] == float64(200) {
			break
		}
	}
	if line["route"] != httpapi.AdminBackupPath || line["did"] != "admin" || line["status"] != float64(200) {
		t.Errorf("request log line = %v\n%s", line, logs)
	}
	// The staged copy goes once the response is sent.
	deadline := time.Now().Add(5 * time.Second)
	for entries, _ := os.ReadDir(spool); len(entries) > 0; entries, _ = os.ReadDir(spool) {
		if time.Now().After(deadline) {
			t.Fatalf("spool directory still holds %v", entries)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// adminFailingSnapshotter fails half-way through a snapshot.
type adminFailingSnapshotter struct{}

func (adminFailingSnapshotter) WriteSnapshot(w io.Writer) (int64, error) {
	n, _ := w.Write(make([]byte, 4096))
	return int64(n), errors.New("database not open")
}

func TestAdminBackupFailureIsInternal(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	srv := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{Token: adminTestToken,
		Snapshots: adminFailingSnapshotter{}, Logger: zerolog.New(logs)}))
	defer srv.Close()
	resp := testkit.Do(t, http.MethodGet, srv.URL+httpapi.AdminBackupPath, "Bearer "+adminTestToken)
	adminWantProblem(t, resp, http.StatusInternalServerError, kpd.CodeInternal)
	if !strings.Contains(logs.String(), "database not open") {
		t.Errorf("internal error not logged:\n%s", logs)
	}
}

// requestObserver records the requests a RequestObserver hears about, as
// "route status".
type requestObserver struct {
	mu   sync.Mutex
	seen []string
}

func (o *requestObserver) LimitExceeded(string) {}

func (o *requestObserver) ObserveRequest(route string, status int, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen = append(o.seen, fmt.Sprintf("%s %d", route, status))
}

// The admin routes report their requests to AdminConfig.Metrics by route
// template, refused ones included.
func TestAdminRequestsObserved(t *testing.T) {
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &kv.Options{
		Clock: func() time.Time { return adminTestNow }, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	obs := &requestObserver{}
	srv := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{Token: adminTestToken, Snapshots: db,
		Stats: db, Tokens: db, Metrics: obs, Logger: zerolog.Nop()}))
	bearer := "Bearer " + adminTestToken
	for _, req := range []struct{ method, path, authorization string }{
		{http.MethodGet, httpapi.AdminStatsPath, ""},
		{http.MethodGet, httpapi.AdminStatsPath, bearer},
		{http.MethodGet, httpapi.AdminBackupPath, bearer},
		{http.MethodDelete, httpapi.AdminTokensPath + "/0123456789abcdef", bearer},
		{http.MethodGet, "/v1/admin/nothing", bearer},
	} {
		resp := testkit.Do(t, req.method, srv.URL+req.path, req.authorization)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// Close waits for the handlers, which report after answering.
	srv.Close()
	want := []string{
		httpapi.AdminStatsPath + " 401",
		httpapi.AdminStatsPath + " 200",
		httpapi.AdminBackupPath + " 200",
		httpapi.AdminTokensPath + "/{id} 404",
		"unmatched 404",
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if !slices.Equal(obs.seen, want) {
		t.Fatalf("observed %q, want %q", obs.seen, want)
	}
}

// adminSlowSnapshotter writes a snapshot of 2,000 chunks, 2 ms apart,
// unless a write fails; done receives what WriteSnapshot returned.
type adminSlowSnapshotter struct{ done chan error }

func (s adminSlowSnapshotter) WriteSnapshot(w io.Writer) (int64, error) {
	var n int64
	for range 2000 {
		k, err := w.Write(make([]byte, 1024))
		n += int64(k)
		if err != nil {
			s.done <- err
			return n, err
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.done <- nil
	return n, nil
}

// A backup whose client goes away (or whose server closes its connections
// at the end of a shutdown) stops spooling at once, ending the read
// transaction that would keep the database from closing.
func TestAdminBackupStopsWhenTheClientGoes(t *testing.T) {
	snap := adminSlowSnapshotter{done: make(chan error, 1)}
	srv := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{Token: adminTestToken, Snapshots: snap,
		SpoolDir: t.TempDir(), Logger: zerolog.Nop()}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+httpapi.AdminBackupPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminTestToken)
	go func() {
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the backup answered %s before its client went away", resp.Status)
	}
	select {
	case err := <-snap.done:
		if err == nil {
			t.Fatal("the snapshot was spooled in full after its client went away")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the snapshot was still spooling 2 s after its client went away")
	}
}
