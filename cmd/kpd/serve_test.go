package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
	"github.com/kpd-dir/kpd/webhook"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{
		"0": 0, "4096": 4096, "512MiB": 512 << 20, "2GiB": 2 << 30, "2 gib": 2 << 30, "64KiB": 64 << 10,
		"1TiB": 1 << 40, "100B": 100, " 3MiB ": 3 << 20,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "2GB", "2G", "lots", "9223372036854775808", "8388608TiB"} {
		if n, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, n)
		}
	}
	for n, want := range map[int]string{0: "0", 100: "100B", 3 << 20: "3MiB", 2<<30 + 1<<20: "2049MiB", 1 << 40: "1TiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// serveConfigOf parses the flags of `kpd serve` from args and env.
func serveConfigOf(t *testing.T, args []string, env map[string]string) *serveConfig {
	t.Helper()
	var c serveConfig
	fs := newFlagSet("serve", io.Discard, "serve [flags]")
	c.register(fs)
	if _, err := parseFlags(fs, args, func(k string) string { return env[k] }); err != nil {
		t.Fatalf("flags %v, environment %v: %v", args, env, err)
	}
	return &c
}

// The store and webhook flags reach kv.Options and the dispatcher, from
// the command line or the environment.
func TestServeStoreAndWebhookOptions(t *testing.T) {
	webhookArgs := []string{"--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", webhookSecret}
	for _, tc := range []struct {
		name         string
		args         []string
		env          map[string]string
		lowWatermark int
		maxOutbox    int
		mmapSize     int
		maxAge       time.Duration
		concurrency  int
	}{
		{"defaults", nil, nil, kv.DefaultLowWatermark, kv.DefaultMaxOutbox, 0, 24 * time.Hour, webhook.DefaultConcurrency},
		{"flags", []string{"--low-watermark", "off", "--max-outbox", "5000", "--mmap-size", "512MiB", "--webhook-max-age", "90m",
			"--webhook-concurrency", "1"}, nil, kv.LowWatermarkOff, 5000, 512 << 20, 90 * time.Minute, 1},
		{"environment", nil, map[string]string{"KPD_LOW_WATERMARK": "0", "KPD_MAX_OUTBOX": "7", "KPD_MMAP_SIZE": "2GiB",
			"KPD_WEBHOOK_MAX_AGE": "0", "KPD_WEBHOOK_CONCURRENCY": "32"}, kv.LowWatermarkOff, 7, 2 << 30, 0, 32},
		{"a watermark", []string{"--low-watermark", "3", "--mmap-size", "1048576"}, nil, 3, kv.DefaultMaxOutbox, 1 << 20, 24 * time.Hour,
			webhook.DefaultConcurrency},
		{"flags over environment", []string{"--low-watermark", "25"}, map[string]string{"KPD_LOW_WATERMARK": "off"},
			25, kv.DefaultMaxOutbox, 0, 24 * time.Hour, webhook.DefaultConcurrency},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serveConfigOf(t, append(slices.Clone(webhookArgs), tc.args...), tc.env)
			opts, err := c.storeOptions(nil, nil, true)
			if err != nil {
				t.Fatal(err)
			}
			if opts.LowWatermark != tc.lowWatermark || opts.MaxOutbox != tc.maxOutbox || opts.InitialMmapSize != tc.mmapSize || !opts.Outbox {
				t.Errorf("store options: low watermark %d, max outbox %d, mmap size %d, outbox %t; want %d, %d, %d, true",
					opts.LowWatermark, opts.MaxOutbox, opts.InitialMmapSize, opts.Outbox, tc.lowWatermark, tc.maxOutbox, tc.mmapSize)
			}
			d, err := c.webhook.dispatcher(nil, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			if d.MaxAge != tc.maxAge || d.Concurrency != tc.concurrency {
				t.Errorf("webhook max age %v, concurrency %d; want %v, %d", d.MaxAge, d.Concurrency, tc.maxAge, tc.concurrency)
			}
		})
	}
}

// refusingSink is a webhook receiver that refuses every event (503) and
// records the types it was offered.
type refusingSink struct {
	mu      sync.Mutex
	offered []string
}

func (s *refusingSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev kpd.Event
	if err := json.NewDecoder(r.Body).Decode(&ev); err == nil {
		s.mu.Lock()
		s.offered = append(s.offered, ev.Type)
		s.mu.Unlock()
	}
	w.WriteHeader(http.StatusServiceUnavailable)
}

func (s *refusingSink) types() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.offered)
}

// TestServeStoreFlags runs kpd serve with low events off and an outbox of
// one event, from the environment: inventories report no watermark,
// draining a pool writes only key_packages.exhausted, and a second event
// pushes the first out of the full outbox.
func TestServeStoreFlags(t *testing.T) {
	fx := loadFixture(t)
	sink := &refusingSink{}
	receiver := httptest.NewServer(sink)
	t.Cleanup(receiver.Close)
	m, _, _ := newMain(map[string]string{"KPD_LOW_WATERMARK": "off", "KPD_MAX_OUTBOX": "1",
		"KPD_WEBHOOK_SECRET": webhookSecret}, fx.now)
	url := startServe(t, m, "--db", filepath.Join(t.TempDir(), "flags.db"), "--listen", "127.0.0.1:0",
		"--auth", "dev", "--webhook-url", receiver.URL, "--metrics-addr", "127.0.0.1:0")
	metricsURL := "http://" + m.MetricsAddr() + "/metrics"
	ctx := context.Background()
	alice, bob := client.New(url, aliceDID), client.New(url, bobDID)

	res, err := alice.Publish(ctx, "dev1", [][]byte{fx.keyPackage})
	if err != nil {
		t.Fatal(err)
	}
	if res.Inventory.LowWatermark != 0 {
		t.Errorf("inventory low watermark %d, want 0 with --low-watermark off", res.Inventory.LowWatermark)
	}
	if _, err := bob.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: aliceDID}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the exhausted event to be offered", func() bool { return len(sink.types()) > 0 })
	_, body := httpGet(t, metricsURL, "")
	if !strings.Contains(body, "kpd_webhook_pending_events 1") || !strings.Contains(body, "kpd_webhook_dropped_events_total 0") {
		t.Fatalf("after the claim, want one pending event and none dropped:\n%s", grepLines(body, "kpd_webhook_"))
	}

	fx.postWelcome(t, ctx, bob)
	_, body = httpGet(t, metricsURL, "")
	if !strings.Contains(body, "kpd_webhook_pending_events 1") || !strings.Contains(body, "kpd_webhook_dropped_events_total 1") {
		t.Fatalf("after the Welcome, want one pending event and one dropped:\n%s", grepLines(body, "kpd_webhook_"))
	}
	waitFor(t, "the Welcome's event to be offered", func() bool {
		return slices.Contains(sink.types(), kpd.EventWelcomePending)
	})
	for _, typ := range sink.types() {
		if typ != kpd.EventKeyPackagesExhausted && typ != kpd.EventWelcomePending {
			t.Fatalf("offered events %v, want only %s and %s", sink.types(), kpd.EventKeyPackagesExhausted, kpd.EventWelcomePending)
		}
	}
}

// grepLines returns the lines of text that contain substr.
func grepLines(text, substr string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

// The size and count limits of SPEC section 7 are flags (and KPD_*
// variables) that reach the API.
func TestServeLimits(t *testing.T) {
	def, err := serveConfigOf(t, nil, nil).limits()
	if err != nil {
		t.Fatal(err)
	}
	if want := (httpapi.Limits{MaxBodyBytes: 8 << 20, MaxKeyPackageBytes: 64 << 10, MaxWelcomeBytes: 4 << 20,
		MaxWelcomeMembers: 10000, MaxPublishBatch: 100, MaxClaimTargets: 100, MaxClaimDevices: 100, MaxRefs: 10000}); def != want {
		t.Fatalf("default limits %+v, want SPEC's %+v", def, want)
	}

	fx := loadFixture(t)
	ctx := context.Background()
	srv, _, _ := newMain(map[string]string{"KPD_MAX_CLAIM_TARGETS": "1", "KPD_MAX_REFS": "2"}, fx.now)
	url := startServe(t, srv, "--db", filepath.Join(t.TempDir(), "limits.db"), "--listen", "127.0.0.1:0", "--auth", "dev",
		"--max-claim-devices", "1",
		"--max-publish-batch", "1", "--max-key-package-size", strconv.Itoa(len(fx.keyPackage)-1),
		"--max-welcome-size", "100", "--max-body-size", "64KiB")
	c := client.New(url, aliceDID)
	_, err = c.Publish(ctx, "dev1", [][]byte{fx.keyPackage, fx.keyPackage})
	wantClientCode(t, err, kpd.CodePayloadTooLarge, "2 KeyPackages in one request; at most 1")
	_, err = c.Publish(ctx, "dev1", [][]byte{fx.keyPackage})
	if e := wantClientCode(t, err, kpd.CodePayloadTooLarge, "nothing was stored"); len(e.Errors) != 1 ||
		!strings.Contains(e.Errors[0].Detail, fmt.Sprintf("at most %d", len(fx.keyPackage)-1)) {
		t.Fatalf("errors = %+v, want the KeyPackage over the size limit", e.Errors)
	}
	_, err = c.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: aliceDID}, {DID: "did:plc:bob"}}})
	wantClientCode(t, err, kpd.CodePayloadTooLarge, "2 targets in one claim; at most 1")
	_, err = c.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: aliceDID, Devices: []string{"a", "b"}}}})
	if e := wantClientCode(t, err, kpd.CodePayloadTooLarge, "names 2 devices; at most 1"); e.Limit != kpd.LimitClaimDevices {
		t.Fatalf("limit %q, want %s", e.Limit, kpd.LimitClaimDevices)
	}
	_, err = c.DeleteKeyPackages(ctx, "dev1", []kpd.Ref{fx.ref, fx.ref, fx.ref})
	if e := wantClientCode(t, err, kpd.CodePayloadTooLarge, "at most 2"); e.Limit != kpd.LimitRefsPerRequest {
		t.Fatalf("limit %q, want %s", e.Limit, kpd.LimitRefsPerRequest)
	}
	_, err = c.PostWelcome(ctx, "c1", make([]byte, 101))
	wantClientCode(t, err, kpd.CodePayloadTooLarge, "at most 100")
	_, err = c.PostWelcome(ctx, "c1", make([]byte, 64<<10))
	wantClientCode(t, err, kpd.CodePayloadTooLarge, "request body exceeds 65536 bytes")

	suite, _ := mls.NewRegistry().Lookup(1)
	three, err := mlstest.Welcome(suite, bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	srv2, _, _ := newMain(nil, fx.now)
	url2 := startServe(t, srv2, "--db", filepath.Join(t.TempDir(), "members.db"), "--listen", "127.0.0.1:0", "--auth", "dev",
		"--max-welcome-members", "2")
	_, err = client.New(url2, aliceDID).PostWelcome(ctx, "c1", three)
	if e := wantClientCode(t, err, kpd.CodePayloadTooLarge, "a Welcome for 3 new members; at most 2"); e.Limit != kpd.LimitWelcomeMembers {
		t.Fatalf("limit %q, want %s", e.Limit, kpd.LimitWelcomeMembers)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-welcome-members", "65537"}, "--max-welcome-members 65537: at most 65536"},
		{[]string{"--max-refs", "100001"}, "--max-refs 100001: at most 100000"},
		{[]string{"--max-claim-targets", "1000", "--max-claim-devices", "101"}, "at most 100000 devices in one claim"},
	} {
		m, _, _ := newMain(nil, fx.now)
		err = m.Run(ctx, append([]string{"serve", "--db", filepath.Join(t.TempDir(), "many.db"), "--listen", "127.0.0.1:0", "--auth", "dev"},
			tc.args...))
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("serve %v: %v, want a usage error %q", tc.args, err, tc.want)
		}
		m.Close()
	}
	for _, arg := range []string{"--max-body-size", "--max-key-package-size", "--max-welcome-size", "--max-welcome-members",
		"--max-publish-batch", "--max-claim-targets", "--max-claim-devices", "--max-refs", "--max-waiters-per-did"} {
		m, _, _ := newMain(nil, fx.now)
		err := m.Run(ctx, []string{"serve", "--db", filepath.Join(t.TempDir(), "zero.db"), "--listen", "127.0.0.1:0", "--auth", "dev", arg, "0"})
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), arg+" 0: want at least 1") {
			t.Errorf("serve %s 0: %v, want a usage error", arg, err)
		}
		m.Close()
	}
}

// wantClientCode fails the test unless err is a problem with code whose
// detail holds detail.
func wantClientCode(t *testing.T, err error, code kpd.Code, detail string) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) || e.Code != code || !strings.Contains(e.Detail, detail) {
		t.Fatalf("err = %v, want %s with %q", err, code, detail)
	}
	return e
}

// A zero or negative limit is refused, not taken for the default; the
// flags whose 0 means something keep that meaning.
func TestServeRefusesZeroLimits(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		flag, value, want string
	}{
		{"--max-available", "0", "--max-available 0: want at least 1"},
		{"--max-available", "-3", "--max-available -3: want at least 1"},
		{"--max-devices", "0", "--max-devices 0: want at least 1"},
		{"--max-waiters", "0", "--max-waiters 0: want at least 1"},
		{"--max-waiters-per-did", "-1", "--max-waiters-per-did -1: want at least 1"},
		{"--claim-retention", "0", "--claim-retention 0s: want more than 0"},
		{"--consumed-retention", "0d", "--consumed-retention 0s: want more than 0"},
		{"--welcome-retention", "0", "--welcome-retention 0s: want more than 0"},
		{"--max-token-age", "0", "--max-token-age 0s: want more than 0"},
	} {
		dbPath := filepath.Join(dir, "zero.db")
		for _, env := range []map[string]string{nil, {envName(strings.TrimPrefix(tc.flag, "--")): tc.value}} {
			args := []string{"serve", "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "dev"}
			if env == nil {
				args = append(args, tc.flag, tc.value)
			}
			m, _, _ := newMain(env, fx.now)
			err := m.Run(ctx, args)
			m.Close()
			if exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("serve %s %s (environment %v): err = %v, want exit status 2 and %q", tc.flag, tc.value, env, err, tc.want)
			}
		}
		if _, err := os.Stat(dbPath); err == nil {
			t.Fatalf("serve %s %s created the database", tc.flag, tc.value)
		}
	}
	m, _, _ := newMain(nil, fx.now)
	startServe(t, m, "--db", filepath.Join(dir, "zeros.db"), "--listen", "127.0.0.1:0", "--auth", "dev",
		"--max-key-package-lifetime", "0", "--clock-skew", "0", "--webhook-max-age", "0", "--low-watermark", "0", "--mmap-size", "0")
}

// An address in use stops kpd serve with an error naming the flag, before
// it creates the database.
func TestServeListenInUse(t *testing.T) {
	fx := loadFixture(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	for _, tc := range []struct {
		flag string
		args []string
	}{
		{"--listen", []string{"--listen", busy.Addr().String()}},
		{"--metrics-addr", []string{"--listen", "127.0.0.1:0", "--metrics-addr", busy.Addr().String()}},
	} {
		dbPath := filepath.Join(dir, "new.db")
		m, _, _ := newMain(nil, fx.now)
		err := m.Run(context.Background(), append([]string{"serve", "--db", dbPath, "--auth", "dev"}, tc.args...))
		if cerr := m.Close(); cerr != nil {
			t.Error(cerr)
		}
		if exitCode(err) != 1 || !strings.Contains(err.Error(), "listen on "+tc.flag+": ") || !strings.Contains(err.Error(), "give "+tc.flag+" another") {
			t.Errorf("serve %v on an address in use: err = %v, want one naming %s", tc.args, err, tc.flag)
		}
		if _, err := os.Stat(dbPath); err == nil {
			t.Errorf("serve %v on an address in use left %s behind", tc.args, dbPath)
		}
	}
	// The listeners of a start that failed later are closed.
	held, err := kv.Open(filepath.Join(dir, "held.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	m, _, _ := newMain(nil, fx.now)
	addr := freeAddr(t)
	err = m.Run(context.Background(), []string{"serve", "--db", filepath.Join(dir, "held.db"), "--auth", "dev", "--listen", addr})
	m.Close()
	if !errors.Is(err, kv.ErrInUse) {
		t.Fatalf("serve on a held database: %v, want kv.ErrInUse", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the listener of a failed start is still open: %v", err)
	}
	ln.Close()
}

// freeAddr returns a loopback address with a port that is free now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
