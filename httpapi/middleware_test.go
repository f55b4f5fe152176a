package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
)

// A body whose Content-Type is anything but CBOR's is JSON (the default),
// as curl -d sends it.
func TestJSONIsTheDefaultContentType(t *testing.T) {
	s := start(t)
	dev1 := fixture(t, 1).KeyPackages["alice_dev1"]
	for _, ctype := range []string{"application/x-www-form-urlencoded", "text/plain; charset=utf-8", "application/vnd.api+json"} {
		resp := s.do("POST", "/v1/devices/dev1/key-packages", alice, ctype, []byte(`{"key_packages":["`+b64(dev1.Message)+`"]}`))
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), string(dev1.Ref())) {
			t.Fatalf("publish with Content-Type %s: %d %s", ctype, resp.StatusCode, body)
		}
	}
	resp := s.do("POST", "/v1/key-packages/claim", bob, "application/x-www-form-urlencoded", []byte(`{"cipher_suite":1,"targets":[{"did":"`+alice+`"}]}`))
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), string(dev1.Ref())) {
		t.Fatalf("claim with a form Content-Type: %d %s", resp.StatusCode, body)
	}
}

// TestCBOR round-trips publish, claim and Welcomes in CBOR, and checks on
// the wire that byte fields are CBOR byte strings and times RFC 3339 text.
func TestCBOR(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	fx := fixture(t, 1)
	a, b := s.as(alice, client.WithCBOR()), s.as(bob, client.WithCBOR())
	dev1 := fx.KeyPackages["alice_dev1"]

	pub := must(a.Publish(ctx, "dev1", [][]byte{dev1.Message}))(t)
	if pub.Results[0].Ref != dev1.Ref() || !pub.Results[0].NotAfter.Equal(dev1.NotAfter) {
		t.Fatalf("publish = %+v", pub.Results)
	}
	claim := must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	if len(claim.KeyPackages) != 1 || !bytes.Equal(claim.KeyPackages[0].KeyPackage, dev1.Message) {
		t.Fatalf("claim = %+v", claim)
	}
	w := s.welcome(s.suite(1), dev1.Ref())
	posted := must(b.PostWelcome(ctx, "cbor", w))(t)
	if !posted.Created || len(posted.Recipients) != 1 {
		t.Fatalf("post = %+v", posted)
	}
	list := must(a.Welcomes(ctx, "dev1", client.ListOptions{}))(t)
	if len(list) != 1 || !bytes.Equal(list[0].Welcome, w) || !list[0].CreatedAt.Equal(s.now) {
		t.Fatalf("welcomes = %+v", list)
	}
	must(a.Ack(ctx, "dev1", posted.WelcomeID))(t)

	// On the wire: a request with a byte string and a suite name; the
	// response's key_package is a byte string, its times text.
	dev2 := fx.KeyPackages["alice_dev2"]
	body, _ := cbor.Marshal(map[string]any{"key_packages": [][]byte{dev2.Bare}})
	resp := s.do("POST", "/v1/devices/dev2/key-packages", alice, "application/cbor", body, "Accept", "application/cbor")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/cbor" {
		t.Fatalf("raw CBOR publish: status %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	body, _ = cbor.Marshal(map[string]any{"cipher_suite": fx.Name, "targets": []map[string]any{{"did": alice}}})
	resp = s.do("POST", "/v1/key-packages/claim", bob, "application/cbor", body, "Accept", "application/cbor")
	var raw map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err := cbor.Unmarshal(data, &raw); err != nil {
		t.Fatalf("claim response is not CBOR: %v", err)
	}
	kps, _ := raw["key_packages"].([]any)
	if len(kps) != 1 {
		t.Fatalf("claim response = %v", raw)
	}
	if kp, ok := kps[0].(map[any]any)["key_package"].([]byte); !ok || !bytes.Equal(kp, dev2.Bare) {
		t.Fatalf("key_package is %T, want the published bytes as a CBOR byte string", kps[0].(map[any]any)["key_package"])
	}
	resp = s.do("GET", "/v1/devices/dev2/key-packages?list=1", alice, "", nil, "Accept", "application/cbor")
	data, _ = io.ReadAll(resp.Body)
	raw = nil
	if err := cbor.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if at, ok := raw["key_packages"].([]any)[0].(map[any]any)["published_at"].(string); !ok || !strings.HasSuffix(at, "Z") {
		t.Fatalf("published_at = %#v, want RFC 3339 UTC text", raw["key_packages"].([]any)[0].(map[any]any)["published_at"])
	}

	// Unknown fields are refused in CBOR as in JSON.
	body, _ = cbor.Marshal(map[string]any{"key_packages": [][]byte{dev2.Bare}, "extra": 1})
	if resp := s.do("POST", "/v1/devices/dev2/key-packages", alice, "application/cbor", body); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("unknown CBOR field: status %d", resp.StatusCode)
	}
	// A problem stays JSON for CBOR clients.
	_, err := a.Inventory(ctx, "nope", false)
	wantCode(t, err, kpd.CodeNotFound)
}

// TestRequestLog: one line per request with the request id (an incoming
// sane one is kept and echoed), route template, status, caller and sizes;
// never the credential or the bytes; successful probes at debug level.
func TestRequestLog(t *testing.T) {
	s := start(t)
	kp := fixture(t, 1).KeyPackages["alice_dev1"]
	body := []byte(`{"key_packages":["` + b64(kp.Message) + `"]}`)
	resp := s.do("POST", "/v1/devices/dev1/key-packages", alice, "application/json", body, "X-Request-Id", "req-42")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Request-Id") != "req-42" {
		t.Fatalf("status %d, X-Request-Id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	resp = s.do("GET", "/v1/devices/dev1/key-packages", alice, "", nil, "X-Request-Id", "bad id\twith\"quotes")
	generated := resp.Header.Get("X-Request-Id")
	if generated == "" || strings.ContainsAny(generated, " \t\"") {
		t.Fatalf("insane incoming id not replaced: %q", generated)
	}
	s.do("GET", "/healthz", "", "", nil)

	lines := s.logs.JSONLines(t)
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3:\n%s", len(lines), s.logs)
	}
	first := lines[0]
	for k, want := range map[string]any{
		"request_id": "req-42", "method": "POST", "route": "/v1/devices/{device}/key-packages",
		"status": float64(200), "did": alice, "bytes_in": float64(len(body)),
	} {
		if first[k] != want {
			t.Errorf("log %s = %v, want %v", k, first[k], want)
		}
	}
	if _, ok := first["latency_ms"]; !ok || first["bytes"].(float64) <= 0 {
		t.Errorf("log line lacks latency or bytes: %v", first)
	}
	if lines[1]["request_id"] != generated || lines[2]["route"] != "/healthz" {
		t.Errorf("log lines = %v", lines[1:])
	}
	// A probe that succeeds is logged at debug level, anything else at info.
	if lines[0]["level"] != "info" || lines[1]["level"] != "info" || lines[2]["level"] != "debug" {
		t.Errorf("log levels %v, %v, %v; want info, info, debug", lines[0]["level"], lines[1]["level"], lines[2]["level"])
	}
	logs := s.logs.String()
	for _, secret := range []string{"Bearer", b64(kp.Message)[:40], "dev1/key-packages"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
}

// failingStore makes one store method fail with an internal error and
// another panic.
type failingStore struct{ kpd.Store }

func (failingStore) Devices(context.Context, string) ([]kpd.DeviceInfo, error) {
	return nil, errors.New("bolt: page 42 at /var/lib/kpd/secret.db is corrupt")
}

func (failingStore) Inventory(context.Context, string, string, bool) (*kpd.Inventory, []kpd.KeyPackageInfo, error) {
	panic("inventory exploded")
}

// TestInternalErrors: an error without a code and a panicking handler are
// both 500 "internal error" for the client, logged with the request id.
func TestInternalErrors(t *testing.T) {
	s := start(t, func(o *options) { o.wrap = func(db kpd.Store) kpd.Store { return failingStore{db} } })
	ctx := context.Background()
	a := s.as(alice)
	_, err := a.Devices(ctx)
	e := wantCode(t, err, kpd.CodeInternal)
	if e.Detail != "internal error" || e.RequestID == "" {
		t.Fatalf("internal error shown as %+v", e)
	}
	_, err = a.Inventory(ctx, "dev1", false)
	p := wantCode(t, err, kpd.CodeInternal)
	if p.Detail != "internal error" {
		t.Fatalf("panic shown as %+v", p)
	}
	logs := s.logs.String()
	for _, want := range []string{`"request_id":"` + e.RequestID + `"`, "page 42", `"request_id":"` + p.RequestID + `"`, "inventory exploded"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	// The server goes on serving.
	if err := a.Health(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestProbes: /healthz is liveness; /readyz is 503 Unavailable with
// Retry-After while Config.Ready fails.
func TestProbes(t *testing.T) {
	var down atomic.Bool
	s := start(t, func(o *options) {
		o.ready = func(context.Context) error {
			if down.Load() {
				return errors.New("database closed")
			}
			return nil
		}
	})
	ctx := context.Background()
	c := client.New(s.URL, "")
	resp := s.do("GET", "/healthz", "", "", nil)
	if body, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	if err := c.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	e := wantCode(t, c.Ready(ctx), kpd.CodeUnavailable)
	if e.RetryAfter <= 0 || strings.Contains(e.Detail, "database") {
		t.Fatalf("not ready: %+v", e)
	}
	if err := c.Health(ctx); err != nil {
		t.Fatalf("liveness fails while not ready: %v", err)
	}
}

// opRecorder records the operation name each authentication sees.
type opRecorder struct {
	auth.Authenticator
	mu  sync.Mutex
	ops []string
}

func (a *opRecorder) Authenticate(r *http.Request) (string, error) {
	a.mu.Lock()
	a.ops = append(a.ops, kpd.OperationFrom(r.Context()))
	a.mu.Unlock()
	return a.Authenticator.Authenticate(r)
}

// TestOperationNames: each route names its SPEC section 6 operation in the
// context its authenticator sees (AT Protocol tokens are bound to one).
func TestOperationNames(t *testing.T) {
	rec := &opRecorder{}
	s := start(t, func(o *options) {
		o.authn = func(a auth.Authenticator) auth.Authenticator { rec.Authenticator = a; return rec }
	})
	id := strings.Repeat("0", 32)
	routes := []struct{ method, path, op string }{
		{"POST", "/v1/devices/d/key-packages", kpd.OpPublishKeyPackages},
		{"GET", "/v1/devices/d/key-packages", kpd.OpGetInventory},
		{"DELETE", "/v1/devices/d/key-packages", kpd.OpDeleteKeyPackages},
		{"POST", "/v1/devices/d/key-packages/sync", kpd.OpSyncKeyPackages},
		{"GET", "/v1/devices", kpd.OpListDevices},
		{"DELETE", "/v1/devices/d", kpd.OpDeleteDevice},
		{"POST", "/v1/key-packages/claim", kpd.OpClaimKeyPackages},
		{"POST", "/v1/welcomes", kpd.OpPostWelcome},
		{"GET", "/v1/welcomes/" + id, kpd.OpGetWelcomeStatus},
		{"GET", "/v1/devices/d/welcomes", kpd.OpListWelcomes},
		{"POST", "/v1/devices/d/welcomes/" + id + "/ack", kpd.OpAckWelcome},
		{"POST", "/v1/devices/d/welcomes/" + id + "/reject", kpd.OpRejectWelcome},
		{"POST", "/v1/devices/d/welcomes/take", kpd.OpTakeWelcome},
	}
	for _, r := range routes {
		s.do(r.method, r.path, alice, "", nil)
	}
	s.do("GET", "/healthz", alice, "", nil) // not authenticated
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ops) != len(routes) {
		t.Fatalf("%d authentications, want %d: %v", len(rec.ops), len(routes), rec.ops)
	}
	for i, r := range routes {
		if rec.ops[i] != r.op {
			t.Errorf("%s %s: operation %q, want %q", r.method, r.path, rec.ops[i], r.op)
		}
	}
}

// A path with a "." or ".." segment, or an encoded slash, is 400, as in
// kpd serve (the API and the admin routes behind WithAdmin), not another
// route or a redirect to one, and it is logged with its request id like
// any other request. Such names are no device names, in paths or in claims.
func TestDotSegments(t *testing.T) {
	s := start(t)
	srv := httptest.NewServer(httpapi.NewServer(httpapi.WithAdmin(s.handler, httpapi.NewAdmin(httpapi.AdminConfig{Logger: zerolog.Nop()}))).Handler)
	t.Cleanup(srv.Close)
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	send := func(method, path, body string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+alice)
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp, data
	}
	kp := fixture(t, 1).KeyPackages["alice_dev1"]
	publish := `{"key_packages":["` + b64(kp.Message) + `"]}`
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/devices/./key-packages"},
		{"POST", "/v1/devices/../key-packages"},
		{"POST", "/v1/devices/%2E%2E/key-packages"},
		{"DELETE", "/v1/devices/."},
		{"GET", "/v1/devices/../welcomes"},
		{"DELETE", "/v1/devices/dev1%2Fkey-packages"}, // not dev1's KeyPackages
		{"GET", "/v1/devices/dev1%2fwelcomes"},
		{"GET", "/v1/admin/../devices"},
	} {
		resp, body := send(c.method, c.path, publish)
		var p struct {
			Code      kpd.Code
			RequestID string `json:"request_id"`
		}
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" ||
			json.Unmarshal(body, &p) != nil || p.Code != kpd.CodeBadRequest {
			t.Errorf("%s %s: %d %s %s, want a 400 BadRequest problem", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if id := resp.Header.Get("X-Request-Id"); id == "" || p.RequestID != id {
			t.Errorf("%s %s: request id %q in the header, %q in the problem", c.method, c.path, id, p.RequestID)
		}
	}
	if n := strings.Count(s.logs.String(), `"status":400`); n != 7 {
		t.Errorf("%d request lines with status 400 for the 7 API paths, want 7:\n%s", n, s.logs)
	}
	// An empty segment names no route either: 404, not a redirect to the
	// cleaned path (which could be another route).
	for _, path := range []string{"/v1/devices//key-packages", "/v1//devices", "/v1/admin//stats"} {
		resp, body := send("GET", path, "")
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("GET %s: %d %s %s, want a 404 problem", path, resp.StatusCode, resp.Header.Get("Location"), body)
		}
	}
	// Dots within a name are fine.
	if resp, body := send("POST", "/v1/devices/.../key-packages", publish); resp.StatusCode != http.StatusOK {
		t.Errorf("publish to device ...: %d %s", resp.StatusCode, body)
	}
	for _, devices := range []string{`"devices":[".."]`, `"devices":["."]`} {
		resp, body := send("POST", "/v1/key-packages/claim", `{"cipher_suite":1,"targets":[{"did":"`+alice+`",`+devices+`}]}`)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("claim with %s: %d %s, want 400", devices, resp.StatusCode, body)
		}
	}
	resp, body := send("POST", "/v1/key-packages/claim", `{"cipher_suite":1,"targets":[{"did":"`+alice+`"}],"exclude_devices":[".."]}`)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("claim excluding ..: %d %s, want 400", resp.StatusCode, body)
	}
}
