package metrics_test

import (
	"context"
	"crypto/rand"
	"errors"
	"math"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/metrics"
)

var (
	_ kv.Observer             = (*metrics.Metrics)(nil)
	_ httpapi.RequestObserver = (*metrics.Metrics)(nil)
)

// now is the clock of the tests' databases.
var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// serve serves m's handler on loopback and returns its URL.
func serve(t testing.TB, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestCounters(t *testing.T) {
	m := metrics.New(metrics.Options{})
	m.Published(1, 3)
	m.Published(83, 2)
	m.Claimed(1, false)
	m.Claimed(1, false)
	m.Claimed(1, true)
	m.Consumed(1)
	m.ClaimMiss(kpd.CodeExhausted)
	m.WelcomePosted()
	m.DeliveryFinished(kpd.DeliveryAcked)
	m.DeliveryFinished(kpd.DeliveryExpired)
	m.WelcomeRejected(kpd.ReasonInvalidWelcome)
	m.CommitBatch(3, 4*time.Millisecond)
	m.CommitBatch(5, 2*time.Millisecond)
	m.ObserveRequest("/v1/welcomes", 201, 30*time.Millisecond)
	m.ObserveRequest("/v1/welcomes", 201, 10*time.Millisecond)
	m.ObserveRequest("unmatched", 404, time.Millisecond)
	m.RateLimited("claims_per_pair")
	m.LimitExceeded(kpd.LimitPublishBatch)
	m.LimitExceeded(kpd.LimitPublishBatch)
	m.LimitExceeded(kpd.LimitDevicesPerDID)
	m.WebhookDelivery("failed")
	m.WebhookDelivery("given_up")
	m.Swept("expired_key_packages", 4)
	m.Swept("claims_purged", 0)
	m.SweepFailed()

	s := scrapeURL(t, serve(t, m))
	s.want(t, "kpd_key_packages_published_total", "suite", map[string]float64{"1": 3, "83": 2})
	s.want(t, "kpd_limit_exceeded_total", "limit", map[string]float64{kpd.LimitPublishBatch: 2, kpd.LimitDevicesPerDID: 1,
		kpd.LimitBodySize: 0, kpd.LimitKeyPackageSize: 0, kpd.LimitWelcomeSize: 0, kpd.LimitClaimTargets: 0, kpd.LimitAvailablePerSuite: 0})
	if got := s.value(t, "kpd_key_packages_claimed_total", "suite", "1", "kind", "regular"); got != 2 {
		t.Errorf("claimed regular = %v, want 2", got)
	}
	if got := s.value(t, "kpd_key_packages_claimed_total", "suite", "1", "kind", "last_resort"); got != 1 {
		t.Errorf("claimed last_resort = %v, want 1", got)
	}
	s.want(t, "kpd_key_packages_consumed_total", "suite", map[string]float64{"1": 1})
	// Known label values exist at zero from the start.
	s.want(t, "kpd_key_package_claim_misses_total", "reason", map[string]float64{"Exhausted": 1, "NoKeyPackages": 0})
	s.want(t, "kpd_welcome_deliveries_total", "outcome", map[string]float64{"acked": 1, "rejected": 0, "expired": 1})
	s.want(t, "kpd_welcome_retrieval_failures_total", "reason", map[string]float64{
		"InvalidWelcome": 1, "NoMatchingKeyPackage": 0, "Other": 0})
	s.want(t, "kpd_rate_limited_total", "limit", map[string]float64{
		"claims_per_pair": 1, "claims_per_claimer": 0, "publish_per_did": 0})
	s.want(t, "kpd_webhook_deliveries_total", "outcome", map[string]float64{"failed": 1, "delivered": 0, "given_up": 1})
	s.want(t, "kpd_sweep_deleted_total", "kind", map[string]float64{"expired_key_packages": 4, "claims_purged": 0})
	if got := s.value(t, "kpd_welcomes_posted_total"); got != 1 {
		t.Errorf("welcomes posted = %v, want 1", got)
	}
	if got := s.value(t, "kpd_sweep_failures_total"); got != 1 {
		t.Errorf("sweep failures = %v, want 1", got)
	}
	if got := s.value(t, "kpd_http_requests_total", "route", "/v1/welcomes", "code", "201"); got != 2 {
		t.Errorf("requests /v1/welcomes 201 = %v, want 2", got)
	}
	if got := s.value(t, "kpd_http_requests_total", "route", "unmatched", "code", "404"); got != 1 {
		t.Errorf("requests unmatched 404 = %v, want 1", got)
	}
	h := s.histogram(t, "kpd_http_request_duration_seconds", "route", "/v1/welcomes")
	if h.GetSampleCount() != 2 || h.GetSampleSum() < 0.0399 || h.GetSampleSum() > 0.0401 {
		t.Errorf("request duration: count %d sum %v, want 2 and 0.04", h.GetSampleCount(), h.GetSampleSum())
	}
	b := s.histogram(t, "kpd_store_commit_batch_size")
	if b.GetSampleCount() != 2 || b.GetSampleSum() != 8 {
		t.Errorf("commit batch size: count %d sum %v, want 2 and 8", b.GetSampleCount(), b.GetSampleSum())
	}
	d := s.histogram(t, "kpd_store_commit_duration_seconds")
	if d.GetSampleCount() != 2 || d.GetSampleSum() < 0.0059 || d.GetSampleSum() > 0.0061 {
		t.Errorf("commit duration: count %d sum %v, want 2 and 0.006", d.GetSampleCount(), d.GetSampleSum())
	}
	// Runtime and process collectors are on the registry.
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if s[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	// Without a store and a backup source, their gauges are absent.
	for _, name := range []string{"kpd_db_size_bytes", "kpd_key_packages_available", "kpd_backup_last_success_timestamp_seconds"} {
		if s[name] != nil {
			t.Errorf("%s present without its source", name)
		}
	}
}

// Two Metrics do not share a registry.
func TestPrivateRegistries(t *testing.T) {
	a, b := metrics.New(metrics.Options{}), metrics.New(metrics.Options{})
	a.WelcomePosted()
	if got := scrapeURL(t, serve(t, b)).value(t, "kpd_welcomes_posted_total"); got != 0 {
		t.Fatalf("b's welcomes_posted_total = %v after a counted one", got)
	}
}

// publish stores n synthetic available KeyPackages for a device (the store
// does not parse them), plus a last resort when lastResort is set.
func publish(t testing.TB, db *kv.DB, did, device string, n int, lastResort bool) {
	t.Helper()
	var kps []kpd.KeyPackage
	for i := range n + 1 {
		if i == n && !lastResort {
			break
		}
		ref, data := make([]byte, 32), make([]byte, 100)
		rand.Read(ref)
		rand.Read(data)
		kps = append(kps, kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: data, LastResort: i == n,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
	}
	if _, _, err := db.Publish(context.Background(), did, device, kps); err != nil {
		t.Fatal(err)
	}
}

// openDB opens a database in t.TempDir() with opts, at the tests' clock.
func openDB(t testing.TB, opts kv.Options) *kv.DB {
	t.Helper()
	opts.Clock, opts.NoSync = func() time.Time { return now }, true
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestStatsGauges(t *testing.T) {
	db := openDB(t, kv.Options{})
	publish(t, db, "did:plc:alice", "phone", 3, true)
	publish(t, db, "did:plc:alice", "laptop", 12, false)
	publish(t, db, "did:plc:bob", "phone", 0, true)
	if _, err := db.Claim(context.Background(), kpd.ClaimRequest{Claimer: "did:plc:carol", CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: "did:plc:alice", Devices: []string{"phone"}}}}); err != nil {
		t.Fatal(err)
	}
	backupAt := time.Date(2026, 11, 27, 11, 30, 0, 0, time.UTC)
	m := metrics.New(metrics.Options{})
	m.CollectStats(db)
	m.CollectLastBackup(func() time.Time { return backupAt })
	s := scrapeURL(t, serve(t, m))

	s.want(t, "kpd_key_packages_available", "suite", map[string]float64{"1": 2 + 12})
	s.want(t, "kpd_key_packages_claimed", "suite", map[string]float64{"1": 1})
	s.want(t, "kpd_key_packages_last_resort", "suite", map[string]float64{"1": 2})
	s.want(t, "kpd_welcome_deliveries_by_state", "state", map[string]float64{"pending": 0, "acked": 0, "rejected": 0, "expired": 0})
	for name, want := range map[string]float64{"kpd_devices": 3, "kpd_welcomes": 0, "kpd_webhook_pending_events": 0,
		"kpd_webhook_dropped_events_total": 0} {
		if got := s.value(t, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	size, err := db.Size()
	if err != nil {
		t.Fatal(err)
	}
	if got := s.value(t, "kpd_db_size_bytes"); got != float64(size) || size <= 0 {
		t.Errorf("db size = %v, want %d", got, size)
	}
	if got := s.value(t, "kpd_backup_last_success_timestamp_seconds"); got != float64(backupAt.Unix()) {
		t.Errorf("last backup = %v, want %d", got, backupAt.Unix())
	}

	// Pools: bob/phone 0 (a last resort only), alice/phone 2, alice/laptop 12.
	h := s.histogram(t, "kpd_device_key_packages")
	if h.GetSampleCount() != 3 || h.GetSampleSum() != 14 {
		t.Errorf("pool sizes: count %d sum %v, want 3 and 14", h.GetSampleCount(), h.GetSampleSum())
	}
	wantCumulative := map[float64]uint64{0: 1, 1: 1, 2: 2, 5: 2, 10: 2, 20: 3, 50: 3, 100: 3, 200: 3, math.Inf(1): 3}
	if len(h.Bucket) != len(kpd.PoolSizeBounds)+1 {
		t.Errorf("%d buckets, want %d and +Inf", len(h.Bucket), len(kpd.PoolSizeBounds))
	}
	for _, b := range h.Bucket {
		if want, ok := wantCumulative[b.GetUpperBound()]; !ok || b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

func TestNoBackupYet(t *testing.T) {
	m := metrics.New(metrics.Options{})
	m.CollectLastBackup(func() time.Time { return time.Time{} })
	if got := scrapeURL(t, serve(t, m)).value(t, "kpd_backup_last_success_timestamp_seconds"); got != 0 {
		t.Fatalf("last backup = %v with none, want 0", got)
	}
}

type failingStats struct{}

func (failingStats) Stats(context.Context) (kpd.Stats, error) {
	return kpd.Stats{}, errors.New("database not open")
}

// A failing store leaves its gauges out and is logged; the rest is served.
func TestStatsFailure(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	m := metrics.New(metrics.Options{Logger: zerolog.New(logs)})
	m.CollectStats(failingStats{})
	m.WelcomePosted()
	s := scrapeURL(t, serve(t, m))
	if got := s.value(t, "kpd_welcomes_posted_total"); got != 1 {
		t.Fatalf("welcomes posted = %v, want 1", got)
	}
	if s["kpd_db_size_bytes"] != nil || s["kpd_key_packages_available"] != nil {
		t.Fatal("store gauges served although Stats failed")
	}
	if !strings.Contains(logs.String(), "database not open") {
		t.Fatalf("the failure was not logged: %q", logs.String())
	}
}

// The store reports its commits to the Observer.
func TestStoreObserver(t *testing.T) {
	m := metrics.New(metrics.Options{})
	db := openDB(t, kv.Options{Observer: m})
	publish(t, db, "did:plc:alice", "phone", 4, false)
	s := scrapeURL(t, serve(t, m))
	s.want(t, "kpd_key_packages_published_total", "suite", map[string]float64{"1": 4})
	if b := s.histogram(t, "kpd_store_commit_batch_size"); b.GetSampleCount() < 1 || b.GetSampleSum() < 1 {
		t.Fatalf("commit batch size: count %d sum %v, want at least one commit", b.GetSampleCount(), b.GetSampleSum())
	}
}

// The outbox backlog and what a full outbox dropped are read from the
// store.
func TestOutboxGauges(t *testing.T) {
	db := openDB(t, kv.Options{Outbox: true, MaxOutbox: 1, LowWatermark: 1})
	publish(t, db, "did:plc:alice", "phone", 2, false)
	for range 2 { // the pool falls to the watermark, then to zero: two events
		if _, err := db.Claim(context.Background(), kpd.ClaimRequest{Claimer: "did:plc:carol", CipherSuite: 1,
			Targets: []kpd.ClaimTarget{{DID: "did:plc:alice"}}}); err != nil {
			t.Fatal(err)
		}
	}
	m := metrics.New(metrics.Options{})
	m.CollectStats(db)
	s := scrapeURL(t, serve(t, m))
	if got := s.value(t, "kpd_webhook_pending_events"); got != 1 {
		t.Errorf("pending events = %v, want 1 (the outbox holds one)", got)
	}
	if got := s.value(t, "kpd_webhook_dropped_events_total"); got != 1 {
		t.Errorf("dropped events = %v, want 1", got)
	}
}

// A pool larger than the last bound counts only in the +Inf bucket.
func TestPoolSizeBeyondLastBound(t *testing.T) {
	db := openDB(t, kv.Options{MaxAvailablePerSuite: 1000})
	last := kpd.PoolSizeBounds[len(kpd.PoolSizeBounds)-1]
	publish(t, db, "did:plc:alice", "phone", last+1, false)
	m := metrics.New(metrics.Options{})
	m.CollectStats(db)
	h := scrapeURL(t, serve(t, m)).histogram(t, "kpd_device_key_packages")
	if h.GetSampleCount() != 1 || h.GetSampleSum() != float64(last+1) {
		t.Fatalf("pool sizes: count %d sum %v, want 1 pool of %d", h.GetSampleCount(), h.GetSampleSum(), last+1)
	}
	for _, b := range h.Bucket {
		want := uint64(0)
		if math.IsInf(b.GetUpperBound(), 1) {
			want = 1
		}
		if b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

// InitSuites shows a fresh server's per-suite series at zero, the store's
// gauges included, beside the suites that have KeyPackages.
func TestInitSuites(t *testing.T) {
	db := openDB(t, kv.Options{})
	publish(t, db, "did:plc:alice", "phone", 2, false)
	m := metrics.New(metrics.Options{})
	m.InitSuites([]uint16{1, 2, 0x4d})
	m.CollectStats(db)
	m.Published(1, 2)
	s := scrapeURL(t, serve(t, m))
	s.want(t, "kpd_key_packages_published_total", "suite", map[string]float64{"1": 2, "2": 0, "77": 0})
	s.want(t, "kpd_key_packages_consumed_total", "suite", map[string]float64{"1": 0, "2": 0, "77": 0})
	for _, suite := range []string{"1", "2", "77"} {
		for _, kind := range []string{"regular", "last_resort"} {
			if got := s.value(t, "kpd_key_packages_claimed_total", "suite", suite, "kind", kind); got != 0 {
				t.Errorf("claimed{suite=%s,kind=%s} = %v, want 0", suite, kind, got)
			}
		}
	}
	s.want(t, "kpd_key_packages_available", "suite", map[string]float64{"1": 2, "2": 0, "77": 0})
	s.want(t, "kpd_key_packages_claimed", "suite", map[string]float64{"1": 0, "2": 0, "77": 0})
	s.want(t, "kpd_key_packages_last_resort", "suite", map[string]float64{"1": 0, "2": 0, "77": 0})
	if n := len(s["kpd_key_packages_available"].GetMetric()); n != 3 {
		t.Errorf("%d available series, want one per suite", n)
	}
}
