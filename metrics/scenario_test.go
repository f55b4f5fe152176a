package metrics_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/metrics"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
	"github.com/kpd-dir/kpd/ratelimit"
)

const (
	alice = "did:plc:alicealicealicealicealic"
	bob   = "did:plc:bobbobbobbobbobbobbobbob"
)

// TestScenarioCounters drives the real HTTP server, store and rate limits,
// all reporting to one Metrics, through a scripted scenario and checks the
// exact values that GET /metrics then shows.
func TestScenarioCounters(t *testing.T) {
	ctx := context.Background()
	clock := func() time.Time { return now }
	m := metrics.New(metrics.Options{})
	db := openDB(t, kv.Options{Observer: m})
	m.CollectStats(db)
	rates, err := ratelimit.NewPolicy(ratelimit.Config{
		ClaimsPerPair: ratelimit.PerMinute(1, 1),
		Clock:         clock,
		OnLimited:     m.RateLimited,
	})
	if err != nil {
		t.Fatal(err)
	}
	registry := mls.NewRegistry()
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Store:          db,
		Auth:           auth.NewDevAuth(),
		Registry:       registry,
		Policy:         httpapi.Policy{MaxLifetime: mls.DefaultMaxLifetime, ClockSkew: mls.DefaultClockSkew},
		Clock:          clock,
		Logger:         zerolog.Nop(),
		RateLimits:     rates,
		Metrics:        m,
		MetricsHandler: m.Handler(),
	}))
	t.Cleanup(srv.Close)
	suite, _ := registry.Lookup(1)
	keyPackage := func(device string, lastResort bool) []byte {
		bare, _, err := mlstest.KeyPackage(suite, mlstest.Options{Identity: alice + "#" + device, LastResort: lastResort,
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return bare
	}
	a, b := client.New(srv.URL, alice), client.New(srv.URL, bob)

	// Publish 3: two regular KeyPackages on the phone, a last resort on
	// the laptop.
	kp1, kp2, lr := keyPackage("phone", false), keyPackage("phone", false), keyPackage("laptop", true)
	must(a.Publish(ctx, "phone", [][]byte{kp1, kp2}))(t)
	must(a.Publish(ctx, "laptop", [][]byte{lr}))(t)

	// Claim 2 (a regular one of the phone, the laptop's last resort), and
	// miss a DID that has nothing.
	claim := must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	if len(claim.KeyPackages) != 2 {
		t.Fatalf("claimed %d KeyPackages, want 2", len(claim.KeyPackages))
	}
	must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: "did:plc:nobody"}}}))(t)
	// The second claim of the same pair within the minute is rate limited.
	_, err = b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != kpd.CodeRateLimited {
		t.Fatalf("third claim: %v, want RateLimited", err)
	}

	// Post one Welcome to both devices; the phone acks, the laptop rejects.
	refs := make([][]byte, len(claim.KeyPackages))
	for i, k := range claim.KeyPackages {
		refs[i], _ = k.Ref.Bytes()
	}
	w, err := mlstest.Welcome(suite, refs...)
	if err != nil {
		t.Fatal(err)
	}
	posted := must(b.PostWelcome(ctx, "convo", w))(t)
	must(a.Ack(ctx, "phone", posted.WelcomeID))(t)
	must(a.Reject(ctx, "laptop", posted.WelcomeID, kpd.ReasonNoMatchingKeyPackage, ""))(t)

	// A request that matches no route.
	resp, err := http.Get(srv.URL + "/v1/nothing-here")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	s := scrapeURL(t, srv.URL+httpapi.MetricsPath)
	s.want(t, "kpd_key_packages_published_total", "suite", map[string]float64{"1": 3})
	for kind, want := range map[string]float64{"regular": 1, "last_resort": 1} {
		if got := s.value(t, "kpd_key_packages_claimed_total", "suite", "1", "kind", kind); got != want {
			t.Errorf("claimed %s = %v, want %v", kind, got, want)
		}
	}
	// The last resort stays available when its delivery is rejected.
	s.want(t, "kpd_key_packages_consumed_total", "suite", map[string]float64{"1": 1})
	s.want(t, "kpd_key_package_claim_misses_total", "reason", map[string]float64{"NoKeyPackages": 1, "Exhausted": 0})
	s.want(t, "kpd_welcome_deliveries_total", "outcome", map[string]float64{"acked": 1, "rejected": 1, "expired": 0})
	s.want(t, "kpd_welcome_retrieval_failures_total", "reason", map[string]float64{
		"NoMatchingKeyPackage": 1, "InvalidWelcome": 0, "Other": 0})
	s.want(t, "kpd_rate_limited_total", "limit", map[string]float64{
		ratelimit.ClaimsPerPair: 1, ratelimit.ClaimsPerClaimer: 0, ratelimit.PublishPerDID: 0})
	if got := s.value(t, "kpd_welcomes_posted_total"); got != 1 {
		t.Errorf("welcomes posted = %v, want 1", got)
	}
	for _, r := range []struct {
		route, code string
		want        float64
	}{
		{"/v1/devices/{device}/key-packages", "200", 2},
		{"/v1/key-packages/claim", "200", 2},
		{"/v1/key-packages/claim", "429", 1},
		{"/v1/welcomes", "201", 1},
		{"/v1/devices/{device}/welcomes/{welcome_id}/ack", "200", 1},
		{"/v1/devices/{device}/welcomes/{welcome_id}/reject", "200", 1},
		{"unmatched", "404", 1},
	} {
		if got := s.value(t, "kpd_http_requests_total", "route", r.route, "code", r.code); got != r.want {
			t.Errorf("requests %s %s = %v, want %v", r.route, r.code, got, r.want)
		}
	}
	if n := len(s["kpd_http_requests_total"].Metric); n != 7 {
		t.Errorf("%d request series, want 7: %v", n, s.series("kpd_http_requests_total"))
	}
	if h := s.histogram(t, "kpd_http_request_duration_seconds", "route", "/v1/key-packages/claim"); h.GetSampleCount() != 3 {
		t.Errorf("claim durations: %d samples, want 3", h.GetSampleCount())
	}

	// The gauges read from the store.
	s.want(t, "kpd_key_packages_available", "suite", map[string]float64{"1": 1})
	s.want(t, "kpd_key_packages_claimed", "suite", map[string]float64{"1": 0})
	s.want(t, "kpd_key_packages_last_resort", "suite", map[string]float64{"1": 1})
	s.want(t, "kpd_welcome_deliveries_by_state", "state", map[string]float64{"pending": 0, "acked": 1, "rejected": 1, "expired": 0})
	if got := s.value(t, "kpd_devices"); got != 2 {
		t.Errorf("devices = %v, want 2", got)
	}
	if h := s.histogram(t, "kpd_device_key_packages"); h.GetSampleCount() != 2 || h.GetSampleSum() != 1 {
		t.Errorf("pool sizes: count %d sum %v, want 2 pools holding 1", h.GetSampleCount(), h.GetSampleSum())
	}

	// The scrape itself is counted, once it was answered.
	s = scrapeURL(t, srv.URL+httpapi.MetricsPath)
	if got := s.value(t, "kpd_http_requests_total", "route", httpapi.MetricsPath, "code", "200"); got != 1 {
		t.Errorf("requests /metrics = %v, want 1", got)
	}
}

// must returns v, failing the test on err: must(c.Publish(...))(t).
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
