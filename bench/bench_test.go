package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
)

// checkReport asserts what every sane report shows: the wanted operations
// ran, none failed, and latency percentiles are ordered.
func checkReport(t *testing.T, r *Report, ops ...string) {
	t.Helper()
	if len(r.Errors) > 0 {
		t.Fatalf("errors: %+v", r.Errors)
	}
	if r.Seconds <= 0 {
		t.Errorf("timed phase of %v s", r.Seconds)
	}
	for _, name := range ops {
		o := r.Op(name)
		if o == nil {
			t.Fatalf("no %s in report %+v", name, r.Operations)
		}
		if o.Count == 0 || o.Errors != 0 || o.PerSecond <= 0 {
			t.Errorf("%s: count %d, errors %d, %.1f/s", name, o.Count, o.Errors, o.PerSecond)
		}
		if !(0 < o.P50Ms && o.P50Ms <= o.P95Ms && o.P95Ms <= o.P99Ms && o.P99Ms <= o.MaxMs) {
			t.Errorf("%s: percentiles out of order: p50 %v p95 %v p99 %v max %v", name, o.P50Ms, o.P95Ms, o.P99Ms, o.MaxMs)
		}
		if o.MeanMs <= 0 || o.MeanMs > o.MaxMs {
			t.Errorf("%s: mean %v outside (0, max %v]", name, o.MeanMs, o.MaxMs)
		}
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, name := range ops {
		if !strings.Contains(text.String(), name) {
			t.Errorf("text report lacks %s:\n%s", name, text.String())
		}
	}
}

func run(t *testing.T, cfg Config) *Report {
	t.Helper()
	cfg.InProcess = cfg.Scenario != ScenarioNoop
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPublish(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioPublish, Count: 12, Batch: 10, PoolSize: 20})
	checkReport(t, r, opPublish)
	o := r.Op(opPublish)
	if o.Count != 12 || o.Items != 120 || r.Generated != 120 {
		t.Errorf("publish: %d batches, %d KeyPackages stored, %d made; want 12, 120, 120", o.Count, o.Items, r.Generated)
	}
	// 30 KeyPackages per worker in pools of 20: two devices each.
	if r.Devices != 8 || r.Stopped != stoppedCount {
		t.Errorf("devices %d, stopped by %q", r.Devices, r.Stopped)
	}
}

func TestClaim(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioClaim, Count: 40, DevicesPerDID: 2, PoolSize: 4})
	checkReport(t, r, opClaim)
	if o := r.Op(opClaim); o.Count != 40 || o.Items != 40 {
		t.Errorf("claim: %d claims, %d KeyPackages", o.Count, o.Items)
	}
	if r.SetupPublished != 40 || r.Devices != 12 {
		t.Errorf("pools: %d published for %d devices", r.SetupPublished, r.Devices)
	}
	// The store's commits of the timed phase: the 40 claims, in at most
	// 40 transactions, each of which wrote pages (its own and a meta page).
	if s := r.Store; s == nil || s.Operations != 40 || s.Commits < 1 || s.Commits > 40 || s.PagesWritten < 2*s.Commits {
		t.Errorf("store report %+v", s)
	} else if !(0 < s.CommitP50Ms && s.CommitP50Ms <= s.CommitP99Ms && s.CommitP99Ms <= s.CommitMaxMs) {
		t.Errorf("commit times p50 %v, p99 %v, max %v ms", s.CommitP50Ms, s.CommitP99Ms, s.CommitMaxMs)
	}
	var text bytes.Buffer
	r.WriteText(&text)
	if !strings.Contains(text.String(), "pages written per commit; commit p50 ") {
		t.Errorf("text report lacks the store line:\n%s", text.String())
	}
}

// A duration-bounded run stops when the KeyPackages it made run out, and
// says so.
func TestClaimStopsWhenExhausted(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioClaim, Duration: 20e9, KeyPackages: 16})
	checkReport(t, r, opClaim)
	if o := r.Op(opClaim); o.Count != 16 || r.Stopped != stoppedExhausted {
		t.Errorf("%d claims, stopped by %q", o.Count, r.Stopped)
	}
}

func TestRoundtrip(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioRoundtrip, Count: 16})
	checkReport(t, r, opClaim, opPostWelcome, opListWelcomes, opAck, opRoundtrip)
	for _, name := range []string{opClaim, opPostWelcome, opListWelcomes, opAck, opRoundtrip} {
		if o := r.Op(name); o.Count != 16 {
			t.Errorf("%s: %d, want 16", name, o.Count)
		}
	}
	if rt, c := r.Op(opRoundtrip), r.Op(opClaim); rt.P50Ms < c.P50Ms {
		t.Errorf("a round trip (p50 %v ms) is faster than its claim (p50 %v ms)", rt.P50Ms, c.P50Ms)
	}
}

func TestMix(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioMix, Count: 400, PoolSize: 40})
	checkReport(t, r, opClaim, opPostWelcome, opListWelcomes, opAck, opInventory, opPublish)
	var total int64
	for _, o := range r.Operations {
		total += o.Count
	}
	if total != 400 {
		t.Errorf("%d operations, want 400", total)
	}
}

func TestNoop(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioNoop, Count: 200})
	checkReport(t, r, opNoop)
	if r.Op(opNoop).Count != 200 || r.Generated != 0 {
		t.Errorf("noop: %+v", r)
	}
}

// Preloaded KeyPackages land in the store and a claim run still works
// beside them; the database file is kept when named.
func TestPreloadAndProfile(t *testing.T) {
	dir := t.TempDir()
	db, profile := filepath.Join(dir, "bench.db"), filepath.Join(dir, "cpu.pprof")
	r := run(t, Config{Scenario: ScenarioClaim, Count: 8, Preload: 450, PoolSize: 200, DBPath: db, CPUProfile: profile})
	checkReport(t, r, opClaim)
	if r.Preloaded != 450 {
		t.Errorf("preloaded %d, want 450", r.Preloaded)
	}
	srv, err := StartServer(ServerConfig{Path: db})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	violations, err := srv.DB.Verify(context.Background())
	if err != nil || len(violations) > 0 {
		t.Fatalf("verify: %v %v", violations, err)
	}
	if info, err := os.Stat(profile); err != nil || info.Size() == 0 {
		t.Errorf("CPU profile not written: %v", err)
	}
}

func TestReportJSON(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioNoop, Count: 10, Workers: 2})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	ops, _ := back["operations"].([]any)
	if back["scenario"] != "noop" || len(ops) != 1 || ops[0].(map[string]any)["p99_ms"] == nil {
		t.Errorf("JSON report: %s", b)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no target":         {Scenario: ScenarioClaim},
		"both targets":      {Scenario: ScenarioClaim, InProcess: true, URL: "http://127.0.0.1:1"},
		"unknown scenario":  {Scenario: "nap", InProcess: true},
		"batch over 100":    {Scenario: ScenarioPublish, InProcess: true, Batch: 101, PoolSize: 200},
		"token without did": {Scenario: ScenarioClaim, URL: "http://127.0.0.1:1", Token: "t"},
		"remote preload":    {Scenario: ScenarioClaim, URL: "http://127.0.0.1:1", Dev: true, Preload: 10},
		"unknown suite":     {Scenario: ScenarioClaim, InProcess: true, Suite: 99},
	} {
		if _, err := Run(context.Background(), cfg); !IsConfigError(err) {
			t.Errorf("%s: got %v, want a config error", name, err)
		}
	}
}

func TestPercentile(t *testing.T) {
	lat := make([]time.Duration, 100)
	for i := range lat {
		lat[i] = time.Duration(i + 1)
	}
	for p, want := range map[int]time.Duration{50: 50, 95: 95, 99: 99, 100: 100, 1: 1} {
		if got := percentile(lat, p); got != want {
			t.Errorf("p%d of 1..100 = %d, want %d", p, got, want)
		}
	}
	if got := percentile(lat[:1], 99); got != 1 {
		t.Errorf("p99 of one sample = %d", got)
	}
}

// A paced run takes as long as its rate says and no less.
func TestRatePacesWorkers(t *testing.T) {
	r := run(t, Config{Scenario: ScenarioNoop, Count: 60, Rate: 200})
	checkReport(t, r, opNoop)
	if r.Seconds < 0.25 || r.Op(opNoop).PerSecond > 240 {
		t.Errorf("60 operations at 200/s took %.3fs (%.0f/s)", r.Seconds, r.Op(opNoop).PerSecond)
	}
}

// Against a running server (--url) with dev authentication, the bench
// makes up its DIDs; with a token, everything happens as the token's one
// DID, one device per worker.
func TestRemoteServer(t *testing.T) {
	srv, err := StartServer(ServerConfig{Path: filepath.Join(t.TempDir(), "dev.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r, err := Run(context.Background(), Config{Scenario: ScenarioRoundtrip, URL: srv.URL, Dev: true, Workers: 3, Count: 9})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, opRoundtrip)
	if r.Target != srv.URL || r.Store != nil {
		t.Errorf("target %q, store report %+v (the store is not in this process)", r.Target, r.Store)
	}
}

func TestRemoteServerWithToken(t *testing.T) {
	srv, err := StartServer(ServerConfig{Path: filepath.Join(t.TempDir(), "token.db"), TokenAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const did = "did:plc:benchtokenowner"
	token, hash, err := auth.GenerateToken()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.DB.PutToken(context.Background(), kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: did, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := Run(context.Background(), Config{Scenario: ScenarioRoundtrip, URL: srv.URL, Token: token, DID: did, Workers: 30, Count: 40})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, r, opRoundtrip)
	if r.Workers != 20 || r.Devices != 20 || r.Op(opRoundtrip).Count != 40 {
		t.Errorf("%d workers, %d devices, %d round trips; want 20, 20, 40", r.Workers, r.Devices, r.Op(opRoundtrip).Count)
	}
	// A wrong token is refused, and the report says so.
	_, err = Run(context.Background(), Config{Scenario: ScenarioClaim, URL: srv.URL, Token: "kpd_wrong", DID: did, Workers: 1, Count: 1})
	if err == nil || !strings.Contains(err.Error(), "Unauthorized") {
		t.Errorf("wrong token: %v", err)
	}
}
