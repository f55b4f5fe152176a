package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
)

// fuzzRoutes are the routes of FuzzRequests, chosen by the low four bits of
// its route byte. The fuzzer's segment replaces "{}" as it is, unescaped:
// it may hold slashes, "." and ".." segments, percent-encodings and a query
// of its own. The ack and reject routes take "<device>/welcomes/<id>" and
// the last route takes a whole path.
var fuzzRoutes = [16]struct{ method, path string }{
	{"POST", "/v1/devices/{}/key-packages"},
	{"GET", "/v1/devices/{}/key-packages"},
	{"DELETE", "/v1/devices/{}/key-packages"},
	{"POST", "/v1/devices/{}/key-packages/sync"},
	{"GET", "/v1/devices"},
	{"DELETE", "/v1/devices/{}"},
	{"POST", "/v1/key-packages/claim"},
	{"POST", "/v1/welcomes"},
	{"GET", "/v1/welcomes/{}"},
	{"GET", "/v1/devices/{}/welcomes"},
	{"POST", "/v1/devices/{}/ack"},
	{"POST", "/v1/devices/{}/reject"},
	{"POST", "/v1/devices/{}/welcomes/take"},
	{"GET", "/readyz"},
	{"GET", "/healthz"},
	{"GET", "/{}"},
}

// fuzzCallers are the credentials of FuzzRequests, chosen by bits 4-5 of
// its route byte: dev authentication or token authentication (a token
// stored in the starting state), as alice or bob.
var fuzzCallers = [4]struct {
	did   string
	token bool
}{{alice, false}, {bob, false}, {alice, true}, {bob, true}}

// fuzzToken is did's API token in FuzzRequests' starting state.
func fuzzToken(did string) string {
	return auth.TokenPrefix + "fuzz-" + strings.TrimPrefix(did, "did:plc:")
}

// tokenAuthKey marks, in a request's context, a request of FuzzRequests
// that fuzzAuth answers with token authentication.
type tokenAuthKey struct{}

// fuzzAuth is dev authentication, or token authentication for requests
// marked with tokenAuthKey: one server fuzzes both.
type fuzzAuth struct{ dev, token auth.Authenticator }

func (a fuzzAuth) Authenticate(r *http.Request) (string, error) {
	if r.Context().Value(tokenAuthKey{}) != nil {
		return a.token.Authenticate(r)
	}
	return a.dev.Authenticate(r)
}

// fuzzEnv is the server of FuzzRequests. Every input starts from the same
// state, a bbolt snapshot: an input that committed a write is verified
// (kv.DB.Verify) and the database is restored from the snapshot before the
// next input. Inputs that commit nothing (most) share the database.
type fuzzEnv struct {
	cfg      httpapi.Config // the setup server's, Store and Auth replaced
	opts     kv.Options
	snapshot []byte
	path     string
	done     chan struct{} // closed: long-polls (?wait=) answer at once
	db       *kv.DB
	handler  http.Handler
	commits  int64 // db's commits when it was opened
}

// fresh makes sure the database holds the starting state: it restores the
// snapshot if the database is not open yet or a write was committed since
// it was opened.
func (e *fuzzEnv) fresh(t testing.TB) {
	if e.db != nil {
		if !e.changed() {
			return
		}
		if err := e.db.Close(); err != nil {
			t.Fatal(err)
		}
		e.db = nil
	}
	if err := os.WriteFile(e.path, e.snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := kv.Open(e.path, &e.opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	cfg.Store = db
	cfg.Auth = fuzzAuth{dev: auth.NewDevAuth(), token: auth.NewTokenAuth(db)}
	cfg.Ready = db.Ready
	cfg.Logger = zerolog.New(io.Discard)
	cfg.Done = e.done
	e.db, e.handler, e.commits = db, httpapi.New(cfg), db.WriteStats().Commits
}

// changed reports whether a write was committed since the database was
// opened.
func (e *fuzzEnv) changed() bool { return e.db.WriteStats().Commits != e.commits }

func (e *fuzzEnv) close() error {
	if e.db == nil {
		return nil
	}
	return e.db.Close()
}

// fuzzRequest turns an input of FuzzRequests into the request a server
// would read, or reports false for an input no client could send (the
// server's HTTP layer answers it 400 before any handler runs).
//
// route's low four bits choose the route (fuzzRoutes), bits 4-5 the caller
// (fuzzCallers), bits 6-7 the Content-Type and Accept: with E the encoding
// of useCBOR, 0 sends Content-Type E and asks for E, 1 sends E and asks
// for the other encoding, 2 sends no Content-Type and asks for E, 3 sends
// the other encoding's Content-Type (wrong for an E body) and asks for E.
// Asking for JSON sends no Accept (JSON is the default), except in 1.
//
// query is the query string up to its first newline; after it come header
// lines, "Name: value", replacing the harness's header of that name (an
// empty value removes it), Host included.
func fuzzRequest(route uint8, segment, query string, useCBOR bool, body []byte) (*http.Request, bool) {
	r := fuzzRoutes[route&0x0f]
	caller := fuzzCallers[route>>4&3]
	query, lines, _ := strings.Cut(query, "\n")
	target := strings.Replace(r.path, "{}", segment, 1)
	if query != "" {
		target += "?" + query
	}
	for _, c := range []byte(target) {
		if c <= ' ' || c == 0x7f {
			return nil, false // not in a request line
		}
	}

	types := [2]string{"application/json", "application/cbor"}
	own, other := types[0], types[1]
	if useCBOR {
		own, other = other, own
	}
	accept := func(enc string) string {
		if enc == types[0] {
			return ""
		}
		return enc
	}
	h := http.Header{}
	switch route >> 6 {
	case 0:
		h.Set("Content-Type", own)
		h.Set("Accept", accept(own))
	case 1:
		h.Set("Content-Type", own)
		h.Set("Accept", other) // explicit, even for JSON
	case 2:
		h.Set("Accept", accept(own))
	case 3:
		h.Set("Content-Type", other)
		h.Set("Accept", accept(own))
	}
	cred := caller.did
	if caller.token {
		cred = fuzzToken(caller.did)
	}
	h.Set("Authorization", "Bearer "+cred)
	host := "127.0.0.1"
	if lines != "" {
		for line := range strings.SplitSeq(lines, "\n") {
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				return nil, false
			}
			name, value = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name)), strings.TrimSpace(value)
			switch {
			case name == "Host":
				host = value
			case value == "":
				h.Del(name)
			default:
				h.Set(name, value)
			}
		}
	}
	for k, v := range h {
		if len(v) == 1 && v[0] == "" {
			delete(h, k)
		}
	}
	if h.Get("Content-Length") == "" && h.Get("Transfer-Encoding") == "" {
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	var raw bytes.Buffer
	fmt.Fprintf(&raw, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.method, target, host)
	h.Write(&raw)
	raw.WriteString("\r\n")
	raw.Write(body)
	req, err := http.ReadRequest(bufio.NewReader(&raw))
	if err != nil {
		return nil, false
	}
	if caller.token {
		req = req.WithContext(context.WithValue(req.Context(), tokenAuthKey{}, true))
	}
	return req, true
}

// serve sends one input to the server and checks the answer and, if the
// input committed a write, the store's invariants. It returns the status,
// 0 for an input fuzzRequest refuses.
func (e *fuzzEnv) serve(t testing.TB, route uint8, segment, query string, useCBOR bool, body []byte) int {
	t.Helper()
	e.fresh(t)
	req, ok := fuzzRequest(route, segment, query, useCBOR, body)
	if !ok {
		return 0
	}
	what := fmt.Sprintf("%s %s (Host %q, token auth %v, Content-Type %q, Accept %q, Authorization %q)",
		req.Method, req.RequestURI, req.Host, req.Context().Value(tokenAuthKey{}) != nil,
		req.Header.Get("Content-Type"), req.Header.Get("Accept"), req.Header.Get("Authorization"))
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)

	if e.changed() {
		violations, err := e.db.Verify(context.Background())
		if err != nil {
			t.Fatalf("%s: verify: %v", what, err)
		}
		if len(violations) > 0 {
			t.Fatalf("%s: status %d, then invariants violated: %v", what, rec.Code, violations)
		}
	}

	status, raw := rec.Code, rec.Body.Bytes()
	if status >= 500 {
		t.Fatalf("%s: status %d: %s", what, status, raw)
	}
	if status >= 400 {
		var p struct {
			Status int      `json:"status"`
			Code   kpd.Code `json:"code"`
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("%s: status %d with Content-Type %q: %s", what, status, ct, raw)
		}
		if err := json.Unmarshal(raw, &p); err != nil || p.Status != status || p.Code == "" {
			t.Fatalf("%s: status %d with a body that is not a problem: %s", what, status, raw)
		}
		if want := httpapi.StatusOf(p.Code); want != status && status != http.StatusMethodNotAllowed {
			t.Fatalf("%s: status %d for code %s, which maps to %d", what, status, p.Code, want)
		}
		return status
	}
	if status >= 300 {
		// No route redirects: paths are matched as they come.
		t.Fatalf("%s: status %d (Location %q): %s", what, status, rec.Header().Get("Location"), raw)
	}
	// Dev authentication answers only loopback hosts (DNS rebinding).
	if path := req.URL.Path; path != "/healthz" && path != "/readyz" && req.Context().Value(tokenAuthKey{}) == nil {
		host := req.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if ip := net.ParseIP(host); !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
			t.Fatalf("%s: status %d under dev authentication for a foreign host", what, status)
		}
	}
	if len(raw) == 0 {
		return status // 204
	}
	accept := req.Header.Get("Accept")
	var v any
	var err error
	switch ct := rec.Header().Get("Content-Type"); {
	case ct == "application/cbor" && accept != "" && accept != "application/json" &&
		strings.Contains(strings.ToLower(accept), "cbor"):
		err = cbor.Unmarshal(raw, &v)
	case strings.HasPrefix(ct, "application/json") && accept != "application/cbor":
		err = json.Unmarshal(raw, &v)
	default:
		t.Fatalf("%s: status %d with Content-Type %q", what, status, ct)
	}
	if err != nil {
		t.Fatalf("%s: status %d with an undecodable body: %v", what, status, err)
	}
	return status
}

// FuzzRequests sends arbitrary bodies (JSON or CBOR), paths, query strings
// and headers to every route of a server holding real state: fixture
// KeyPackages of several suites published, claimed and still available,
// a Welcome pending for two devices, API tokens (see fuzzRequest for how
// an input is read). Every input starts from that state. Whatever the
// input: no 5xx, every error is a problem document whose code maps to its
// status, every success decodes in the negotiated encoding, dev
// authentication answers only loopback hosts, and the store's invariants
// hold after every input that wrote. The seeds' statuses are checked
// before fuzzing, so that a change that keeps requests from the handlers
// (a 401 for every request) fails `go test`.
func FuzzRequests(f *testing.F) {
	var cfg httpapi.Config
	s := start(f, func(o *options) {
		o.kv.NoSync = true
		o.suites = extraSuites
		o.config = func(c *httpapi.Config) { cfg = *c }
	})
	ctx := context.Background()
	fx := func(suite uint16) *testkit.FixtureSuite { return fixture(f, suite) }
	kp := func(suite uint16, name string) []byte { return fx(suite).KeyPackages[name].Bare }
	ref := func(suite uint16, name string) kpd.Ref { return kpd.Ref(fx(suite).KeyPackages[name].RefHex) }

	// The starting state. Only fixtures, so that every process (the fuzzing
	// workers too) builds the same one and a failing input replays.
	for _, p := range []struct {
		suite  uint16
		device string
		names  []string
	}{
		{1, "dev1", []string{"alice_dev1", "alice_last_resort"}},
		{1, "dev2", []string{"alice_dev2"}},
		{2, "dev1", []string{"alice_dev1"}},
		{2, "dev2", []string{"alice_dev2"}},
		{3, "dev1", []string{"alice_dev1", "alice_last_resort"}},
		{3, "dev2", []string{"alice_dev2"}},
	} {
		var kps [][]byte
		for _, n := range p.names {
			kps = append(kps, kp(p.suite, n))
		}
		must(s.as(alice).Publish(ctx, p.device, kps))(f)
	}
	must(s.as(bob).Publish(ctx, "phone", [][]byte{kp(1, "bob")}))(f)
	for _, suite := range []uint16{1, 2} {
		must(s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: suite, Targets: []kpd.ClaimTarget{{DID: alice}}}))(f)
	}
	posted := must(s.as(bob).PostWelcome(ctx, "convo", fx(1).Welcome.Message))(f)
	for _, did := range []string{alice, bob} {
		hash := auth.HashToken(fuzzToken(did))
		if err := s.db.PutToken(ctx, kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: did, CreatedAt: s.now}); err != nil {
			f.Fatal(err)
		}
	}
	var snap bytes.Buffer
	if _, err := s.db.WriteSnapshot(&snap); err != nil {
		f.Fatal(err)
	}
	e := &fuzzEnv{
		cfg:      cfg,
		opts:     kv.Options{Clock: cfg.Clock, NoSync: true},
		snapshot: snap.Bytes(),
		path:     filepath.Join(f.TempDir(), "fuzz.db"),
		done:     make(chan struct{}),
	}
	close(e.done)
	f.Cleanup(func() {
		if err := e.close(); err != nil {
			f.Error(err)
		}
	})

	jsonBody := func(v any) []byte {
		b, _ := json.Marshal(v)
		return b
	}
	cborBody := func(v any) []byte {
		b, _ := cbor.Marshal(v)
		return b
	}
	// Route bytes: route | caller<<4 | variant<<6.
	const (
		asBob        = 1 << 4
		aliceToken   = 2 << 4
		bobToken     = 3 << 4
		mixed        = 1 << 6 // asks for the other encoding
		noType       = 2 << 6
		wrongType    = 3 << 6
		welcomeRoute = 7
	)
	wid := posted.WelcomeID
	for i, seed := range []struct {
		route   uint8
		segment string
		query   string
		cbor    bool
		body    []byte
		want    int
	}{
		// publish
		{0, "dev1", "", false, jsonBody(map[string]any{"key_packages": [][]byte{kp(7, "alice_dev1")}}), 200},
		{0, "dev2", "", true, cborBody(map[string]any{"key_packages": [][]byte{fx(5).KeyPackages["alice_dev2"].Message}}), 200},
		{0 | noType, "dev1", "", false, jsonBody(map[string]any{"key_packages": [][]byte{kp(7, "alice_dev1")}}), 200},
		{0 | aliceToken | mixed, "dev1", "", true, cborBody(map[string]any{"key_packages": [][]byte{kp(3, "alice_dev1")}}), 200},
		{0 | wrongType, "dev1", "", false, jsonBody(map[string]any{"key_packages": [][]byte{kp(7, "alice_dev1")}}), 400},
		{0, "dev1", "", false, jsonBody(map[string]any{"key_packages": [][]byte{fx(1).Invalid.BadSignature}}), 422},
		// inventory, delete, sync, devices
		{1, "dev1", "list=1", false, nil, 200},
		{1, "dev1", "list=1\nAccept: application/cbor;q=0.5, application/json", false, nil, 200},
		{1, "dev1", "\nContent-Type:\nAccept: APPLICATION/CBOR", false, nil, 200},
		{2, "dev1", "", false, jsonBody(map[string]any{"refs": []kpd.Ref{ref(3, "alice_dev1")}}), 200},
		{3, "dev1", "", true, cborBody(map[string]any{"refs": []kpd.Ref{ref(1, "alice_dev1"), ref(2, "alice_dev1"), ref(3, "alice_last_resort")}}), 200},
		{4 | asBob, "", "", true, nil, 200},
		{5, "dev2", "", false, nil, 204},
		// claim
		{6 | asBob, "", "", false, jsonBody(map[string]any{"cipher_suite": 3, "targets": []map[string]any{{"did": alice, "devices": []string{"dev1"}}}}), 200},
		{6 | aliceToken, "", "", true, cborBody(map[string]any{"cipher_suite": "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", "targets": []map[string]any{{"did": bob}}, "all_or_nothing": true}), 200},
		{6 | asBob | wrongType, "", "", true, cborBody(map[string]any{"cipher_suite": 3, "targets": []map[string]any{{"did": alice}}}), 400},
		// Welcomes
		{welcomeRoute | asBob, "", "", false, jsonBody(map[string]any{"convo_id": "c2", "welcome": fx(2).Welcome.Message}), 201},
		{welcomeRoute | bobToken, "", "", true, cborBody(map[string]any{"convo_id": "convo", "welcome": fx(1).Welcome.Message}), 200},
		{welcomeRoute, "", "", false, jsonBody(map[string]any{"convo_id": "c3", "welcome": fx(3).Welcome.Message}), 422},
		{8 | asBob, wid, "", false, nil, 200},
		{8, wid, "", false, nil, 404},
		{9, "dev1", "convo_id=convo&limit=5&wait=0", false, nil, 200},
		{9 | asBob, "phone", "wait=30s", true, nil, 200},
		{10, "dev1/welcomes/" + wid, "", false, nil, 200},
		{11, "dev2/welcomes/" + wid, "", false, jsonBody(map[string]any{"reason": "NoMatchingKeyPackage", "detail": "x"}), 200},
		{12 | aliceToken, "dev1", "convo_id=convo", true, nil, 200},
		{12, "phone", "", false, nil, 404},
		// probes and raw paths
		{13, "", "", false, nil, 200},
		{14, "", "", true, nil, 200},
		{15, "v1/devices/dev1/key-packages", "list=1", false, nil, 200},
		{15, "v1/devices/dev1/../dev2/key-packages", "", false, nil, 400},
		{1, "dev1%2F..%2Fdev2", "", false, nil, 400},
		{1, "%2e", "", false, nil, 400},
		{10, "dev1/welcomes/./" + wid, "", false, nil, 400},
		{0, "dev1/../x", "list=%zz", false, []byte(`{"key_packages": [`), 400},
		// authentication
		{4, "", "\nHost: kpd.test", false, nil, 401},
		{4 | aliceToken, "", "\nHost: kpd.test", false, nil, 200},
		{4, "", "\nHost: localhost:8080", false, nil, 200},
		{4 | bobToken, "", "\nAuthorization: Bearer kpd_unknown", false, nil, 401},
		{4, "", "\nAuthorization: bearer " + carol, false, nil, 200},
		{4, "", "\nAuthorization: Basic YWxpY2U6cHc=", false, nil, 401},
		{4, "", "\nAuthorization:", false, nil, 401},
	} {
		if got := e.serve(f, seed.route, seed.segment, seed.query, seed.cbor, seed.body); got != seed.want {
			f.Errorf("seed %d (route %#x %q %q): status %d, want %d", i, seed.route, seed.segment, seed.query, got, seed.want)
		}
		f.Add(seed.route, seed.segment, seed.query, seed.cbor, seed.body)
	}

	f.Fuzz(func(t *testing.T, route uint8, segment, query string, useCBOR bool, body []byte) {
		e.serve(t, route, segment, query, useCBOR, body)
	})
}
