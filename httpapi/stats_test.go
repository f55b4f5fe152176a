package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
)

// statsTestServer serves NewAdmin with a Stats source over a database in
// t.TempDir() and returns its URL and the database.
func statsTestServer(t *testing.T, lastBackup time.Time) (string, *kv.DB) {
	t.Helper()
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &kv.Options{
		Clock: func() time.Time { return adminTestNow }, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	srv := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{
		Token:      adminTestToken,
		Snapshots:  db,
		Stats:      db,
		LastBackup: func() time.Time { return lastBackup },
		Logger:     zerolog.Nop(),
	}))
	t.Cleanup(srv.Close)
	return srv.URL, db
}

type statsBody struct {
	KeyPackages struct {
		Suites []kpd.SuiteStats `json:"suites"`
	} `json:"key_packages"`
	Devices    int64                       `json:"devices"`
	Welcomes   int64                       `json:"welcomes"`
	Deliveries map[kpd.DeliveryState]int64 `json:"deliveries"`
	PoolSizes  []struct {
		AtMost *int  `json:"at_most"`
		Pools  int64 `json:"pools"`
	} `json:"pool_sizes"`
	PendingEvents int64      `json:"pending_events"`
	DBSizeBytes   int64      `json:"db_size_bytes"`
	LastBackup    *time.Time `json:"last_backup"`
}

func getStats(t *testing.T, url string) statsBody {
	t.Helper()
	resp := testkit.Do(t, http.MethodGet, url+httpapi.AdminStatsPath, "Bearer "+adminTestToken)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var body statsBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body
}

func TestAdminStats(t *testing.T) {
	backupAt := adminTestNow.Add(-20 * time.Minute)
	url, db := statsTestServer(t, backupAt)
	adminPublish(t, db, "did:plc:alice", 7, 100)
	if _, err := db.Claim(context.Background(), kpd.ClaimRequest{Claimer: "did:plc:bob", CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: "did:plc:alice"}}}); err != nil {
		t.Fatal(err)
	}

	st := getStats(t, url)
	if len(st.KeyPackages.Suites) != 1 {
		t.Fatalf("suites = %+v, want suite 1 only", st.KeyPackages.Suites)
	}
	if s := st.KeyPackages.Suites[0]; s != (kpd.SuiteStats{CipherSuite: 1, Available: 6, Claimed: 1}) {
		t.Errorf("suite 1 = %+v, want 6 available, 1 claimed", s)
	}
	if st.Devices != 1 || st.Welcomes != 0 || st.PendingEvents != 0 {
		t.Errorf("devices %d, welcomes %d, pending events %d; want 1, 0, 0", st.Devices, st.Welcomes, st.PendingEvents)
	}
	for _, state := range []kpd.DeliveryState{kpd.DeliveryPending, kpd.DeliveryAcked, kpd.DeliveryRejected, kpd.DeliveryExpired} {
		if n, ok := st.Deliveries[state]; !ok || n != 0 {
			t.Errorf("deliveries[%s] = %d (present %v), want 0", state, n, ok)
		}
	}
	if len(st.PoolSizes) != len(kpd.PoolSizeBounds)+1 {
		t.Fatalf("%d pool size buckets, want %d", len(st.PoolSizes), len(kpd.PoolSizeBounds)+1)
	}
	for i, b := range st.PoolSizes {
		want := int64(0)
		if i < len(kpd.PoolSizeBounds) && kpd.PoolSizeBounds[i] == 10 {
			want = 1 // dev1 holds 6: the bucket up to 10
		}
		last := i == len(kpd.PoolSizeBounds)
		if b.Pools != want || (b.AtMost == nil) != last || (!last && *b.AtMost != kpd.PoolSizeBounds[i]) {
			t.Errorf("pool bucket %d = {at_most %v, pools %d}, want {%v, %d}", i, b.AtMost, b.Pools, kpd.PoolSizeBounds[min(i, len(kpd.PoolSizeBounds)-1)], want)
		}
	}
	size, err := db.Size()
	if err != nil {
		t.Fatal(err)
	}
	if st.DBSizeBytes != size {
		t.Errorf("db_size_bytes = %d, want %d", st.DBSizeBytes, size)
	}
	if st.LastBackup == nil || !st.LastBackup.Equal(backupAt) {
		t.Errorf("last_backup = %v, want %v", st.LastBackup, backupAt)
	}
}

func TestAdminStatsNoBackup(t *testing.T) {
	url, _ := statsTestServer(t, time.Time{})
	st := getStats(t, url)
	if st.LastBackup != nil || st.KeyPackages.Suites == nil || len(st.KeyPackages.Suites) != 0 {
		t.Fatalf("stats of an empty database = %+v, want no suites (an empty list) and no last backup", st)
	}
}

func TestAdminStatsNeedsToken(t *testing.T) {
	url, _ := statsTestServer(t, time.Time{})
	for _, auth := range []string{"", "Bearer wrong-token-wrong-token", "Bearer " + adminTestToken + "x"} {
		adminWantProblem(t, testkit.Do(t, http.MethodGet, url+httpapi.AdminStatsPath, auth), http.StatusUnauthorized, kpd.CodeUnauthorized)
	}
}
