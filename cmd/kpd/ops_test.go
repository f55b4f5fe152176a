package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/webhook"
)

const (
	bobDID         = "did:plc:bobbobbobbobbobbobbobbob"
	webhookSecret  = "a-webhook-secret-of-some-length"
	opsAdminToken  = "an-admin-token-for-the-ops-test"
	receiverWindow = 10 * time.Second
)

// eventSink is a webhook receiver that verifies signatures and keeps the
// events in arrival order.
type eventSink struct {
	t      *testing.T
	now    time.Time
	mu     sync.Mutex
	events []kpd.Event
}

func (s *eventSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	if err := webhook.Verify([]byte(webhookSecret), r.Header.Get(webhook.SignatureHeader), body, s.now, time.Minute); err != nil {
		s.t.Errorf("webhook signature: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev kpd.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		s.t.Errorf("webhook body %s: %v", body, err)
		return
	}
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *eventSink) types() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ev := range s.events {
		out = append(out, ev.Type)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(receiverWindow)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// httpGet sends a GET with the given Authorization header (none when
// empty) and returns the status and the body.
func httpGet(t *testing.T, url, authorization string) (int, string) {
	t.Helper()
	resp := testkit.Do(t, http.MethodGet, url, authorization)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// TestServeOperations wires everything outside the store: events reach a
// webhook receiver signed and in order, metrics are served on their own
// listener only, the admin stats answer, and shutting down releases a
// waiting long-poll at once.
func TestServeOperations(t *testing.T) {
	fx := loadFixture(t)
	sink := &eventSink{t: t, now: fx.now}
	receiver := httptest.NewServer(sink)
	t.Cleanup(receiver.Close)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "webhook-secret")
	if err := os.WriteFile(secretFile, []byte(webhookSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, _, stderr := newMain(map[string]string{"KPD_ADMIN_TOKEN": opsAdminToken}, fx.now)
	if err := m.Run(context.Background(), []string{"serve", "--db", filepath.Join(dir, "ops.db"), "--listen", "127.0.0.1:0",
		"--auth", "dev", "--webhook-url", receiver.URL + "/hook?token=x", "--webhook-secret-file", secretFile,
		"--metrics-addr", "127.0.0.1:0", "--sweep-interval", "1s"}); err != nil {
		t.Fatalf("serve: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	url := "http://" + m.Addr()
	if strings.Contains(stderr.String(), "token=x") || strings.Contains(stderr.String(), webhookSecret) {
		t.Errorf("the webhook URL's query or the secret is in the log:\n%s", stderr)
	}

	ctx := context.Background()
	alice, bob := client.New(url, aliceDID), client.New(url, bobDID)
	if _, err := alice.Publish(ctx, "dev1", [][]byte{fx.keyPackage}); err != nil {
		t.Fatal(err)
	}
	claim, err := bob.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: aliceDID}}})
	if err != nil || len(claim.KeyPackages) != 1 {
		t.Fatalf("claim = %+v, %v", claim, err)
	}
	fx.postWelcome(t, ctx, bob)

	// The claim took dev1's pool below the watermark and emptied it; the
	// Welcome awaits it.
	waitFor(t, "three webhook events", func() bool { return len(sink.types()) >= 3 })
	want := strings.Join([]string{kpd.EventKeyPackagesLow, kpd.EventKeyPackagesExhausted, kpd.EventWelcomePending}, " ")
	if got := strings.Join(sink.types(), " "); got != want {
		t.Fatalf("events %s, want %s", got, want)
	}

	// Metrics: on --metrics-addr, not on the API listener.
	if code, _ := httpGet(t, url+"/metrics", ""); code != http.StatusNotFound {
		t.Errorf("GET /metrics on the API listener: %d, want 404", code)
	}
	waitFor(t, "the deliveries to be counted and the outbox emptied", func() bool {
		_, body := httpGet(t, "http://"+m.MetricsAddr()+"/metrics", "")
		return strings.Contains(body, `kpd_webhook_deliveries_total{outcome="delivered"} 3`) &&
			strings.Contains(body, "kpd_webhook_pending_events 0")
	})
	_, body := httpGet(t, "http://"+m.MetricsAddr()+"/metrics", "")
	for _, want := range []string{
		`kpd_key_packages_published_total{suite="1"} 1`,
		`kpd_key_packages_published_total{suite="2"} 0`, // a configured suite, at zero
		`kpd_key_packages_available{suite="7"} 0`,
		`kpd_key_packages_claimed_total{kind="regular",suite="1"} 1`,
		`kpd_limit_exceeded_total{limit="publish_batch"} 0`,
		`kpd_welcomes_posted_total 1`,
		`kpd_sweep_deleted_total{kind="expired_key_packages"} 0`,
		`kpd_http_requests_total{code="201",route="/v1/welcomes"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Admin stats, counted in the request metrics like the API routes.
	code, stats := httpGet(t, url+"/v1/admin/stats", "Bearer "+opsAdminToken)
	if code != http.StatusOK || !strings.Contains(stats, `"devices":1`) || !strings.Contains(stats, `"pending":1`) {
		t.Errorf("admin stats: %d %s", code, stats)
	}
	if code, _ := httpGet(t, url+"/v1/admin/stats", ""); code != http.StatusUnauthorized {
		t.Errorf("admin stats without the token: %d, want 401", code)
	}
	waitFor(t, "the admin requests to be counted", func() bool {
		_, body := httpGet(t, "http://"+m.MetricsAddr()+"/metrics", "")
		return strings.Contains(body, `kpd_http_requests_total{code="200",route="/v1/admin/stats"} 1`) &&
			strings.Contains(body, `kpd_http_requests_total{code="401",route="/v1/admin/stats"} 1`) &&
			strings.Contains(body, `kpd_http_request_duration_seconds_count{route="/v1/admin/stats"} 2`)
	})

	// A waiting long-poll ends as soon as the shutdown begins.
	list, err := alice.Welcomes(ctx, "dev1", client.ListOptions{})
	if err != nil || len(list) != 1 {
		t.Fatalf("welcomes = %+v, %v", list, err)
	}
	if _, err := alice.Ack(ctx, "dev1", list[0].WelcomeID); err != nil {
		t.Fatal(err)
	}
	polled := make(chan error, 1)
	go func() {
		_, err := alice.Welcomes(ctx, "dev1", client.ListOptions{Wait: time.Minute})
		polled <- err
	}()
	time.Sleep(300 * time.Millisecond) // let the listing start waiting
	start := time.Now()
	closed = true
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Close took %v with a long-poll waiting", elapsed)
	}
	select {
	case err := <-polled:
		if err != nil {
			t.Errorf("the released long-poll failed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the long-poll was not released")
	}
}

func TestServeOperationsFlags(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(webhookSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"url without secret", []string{"--webhook-url", "http://127.0.0.1:9/hook"}, "--webhook-secret"},
		{"short secret", []string{"--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "short"}, "at least 16"},
		{"not http", []string{"--webhook-url", "ftp://example/hook", "--webhook-secret", webhookSecret}, "http or https"},
		{"URL not echoed", []string{"--webhook-url", "ftp://user:hunter2@example/hook?token=s3cret", "--webhook-secret", webhookSecret}, "http or https"},
		{"secret twice", []string{"--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", webhookSecret,
			"--webhook-secret-file", secretFile}, "not both"},
		{"sweep interval", []string{"--sweep-interval", "0"}, "--sweep-interval"},
		{"webhook max age", []string{"--webhook-max-age", "-1h"}, "-webhook-max-age"},
		{"webhook concurrency zero", []string{"--webhook-concurrency", "0"}, "--webhook-concurrency 0: want at least 1"},
		{"outbox cap zero", []string{"--max-outbox", "0"}, "--max-outbox 0: want at least 1"},
		{"outbox cap not a number", []string{"--max-outbox", "many"}, "-max-outbox"},
		{"mmap size unit", []string{"--mmap-size", "2GB"}, "-mmap-size"},
		{"mmap size negative", []string{"--mmap-size", "-1"}, "-mmap-size"},
		{"mmap size too large", []string{"--mmap-size", "9223372036854775807KiB"}, "-mmap-size"},
		{"low watermark negative", []string{"--low-watermark", "-1"}, "-low-watermark"},
		{"low watermark word", []string{"--low-watermark", "none"}, "-low-watermark"},
		{"dev auth, public metrics", []string{"--metrics-addr", "0.0.0.0:0"}, "--auth dev needs a loopback --metrics-addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _, _ := newMain(nil, fx.now)
			defer m.Close()
			err := m.Run(context.Background(), append([]string{"serve", "--db", filepath.Join(dir, "flags.db"),
				"--listen", "127.0.0.1:0", "--auth", "dev"}, tc.args...))
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve %v: %v; want a usage error naming %q", tc.args, err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("serve %v: the usage error shows the URL's credentials: %v", tc.args, err)
			}
		})
	}
}
