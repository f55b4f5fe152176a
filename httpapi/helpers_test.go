package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// DIDs of the tests. Alice's is the identity of the fixtures' KeyPackages.
const (
	alice = testkit.AliceDID
	bob   = "did:plc:bobbobbobbobbobbobbobbob"
	carol = "did:plc:carolcarolcarolcarolcaro"
)

// fixture returns the ts-mls fixtures of one suite.
func fixture(t testing.TB, suite uint16) *testkit.FixtureSuite {
	t.Helper()
	return testkit.Fixtures(t).Suite(t, suite)
}

// extraSuites configures the fixtures' private code points 77 and 83.
var extraSuites = []string{"77=sha256:ed25519", "83=sha512:ed25519"}

// options configure a test server.
type options struct {
	kv        kv.Options
	limits    httpapi.Limits
	policy    httpapi.Policy
	suites    []string
	tokenAuth bool
	authn     func(auth.Authenticator) auth.Authenticator // wraps the authenticator
	ready     func(context.Context) error
	wrap      func(kpd.Store) kpd.Store
	rates     httpapi.RateLimiter
	config    func(*httpapi.Config) // adjusts the server's configuration last
}

// testServer is the real handler on a real kv file, served on 127.0.0.1.
type testServer struct {
	t        testing.TB
	URL      string
	db       *kv.DB
	registry *mls.Registry
	now      time.Time
	logs     *testkit.SyncBuffer
	// handler is the API handler the server serves, for in-process calls.
	handler http.Handler
}

// start serves httpapi.New on a fresh kv database in t.TempDir(), with dev
// authentication unless tokenAuth is set and the clock at the fixtures' Now
// (testkit.FixtureSet.Now). The store's invariants are verified when the
// test ends.
func start(t testing.TB, opts ...func(*options)) *testServer {
	t.Helper()
	o := options{policy: httpapi.Policy{MaxLifetime: mls.DefaultMaxLifetime, ClockSkew: mls.DefaultClockSkew}}
	for _, f := range opts {
		f(&o)
	}
	now := testkit.Fixtures(t).Now()
	clock := func() time.Time { return now }
	o.kv.Clock = clock
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &o.kv)
	if err != nil {
		t.Fatal(err)
	}
	registry := mls.NewRegistry()
	for _, spec := range o.suites {
		if err := registry.Add(spec); err != nil {
			t.Fatal(err)
		}
	}
	var store kpd.Store = db
	if o.wrap != nil {
		store = o.wrap(db)
	}
	var authn auth.Authenticator = auth.NewDevAuth()
	if o.tokenAuth {
		authn = auth.NewTokenAuth(db)
	}
	if o.authn != nil {
		authn = o.authn(authn)
	}
	logs := &testkit.SyncBuffer{}
	cfg := httpapi.Config{
		Store:      store,
		Auth:       authn,
		Registry:   registry,
		Policy:     o.policy,
		Limits:     o.limits,
		Clock:      clock,
		Logger:     zerolog.New(logs),
		Ready:      o.ready,
		RateLimits: o.rates,
	}
	if o.config != nil {
		o.config(&cfg)
	}
	handler := httpapi.New(cfg)
	srv := httptest.NewServer(handler)
	t.Cleanup(func() {
		srv.Close()
		violations, err := db.Verify(context.Background())
		if err != nil {
			t.Errorf("verify: %v", err)
		}
		for _, v := range violations {
			t.Errorf("invariant violated: %v", v)
		}
		if err := db.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &testServer{t: t, URL: srv.URL, db: db, registry: registry, now: now, logs: logs, handler: handler}
}

// as returns a client authenticated as did (dev authentication).
func (s *testServer) as(did string, opts ...client.Option) *client.Client {
	return client.New(s.URL, did, opts...)
}

// suite returns a configured suite.
func (s *testServer) suite(id uint16) mls.Suite {
	s.t.Helper()
	suite, ok := s.registry.Lookup(mls.CipherSuite(id))
	if !ok {
		s.t.Fatalf("suite %d is not configured", id)
	}
	return suite
}

// keyPackage makes a real signed KeyPackage of suite for identity, valid at
// the server's time.
func (s *testServer) keyPackage(suite uint16, identity string, lastResort bool) ([]byte, kpd.Ref) {
	s.t.Helper()
	return s.keyPackageWith(suite, mlstest.Options{Identity: identity, LastResort: lastResort})
}

// keyPackageWith makes a KeyPackage with o, its lifetime defaulting to one
// valid at the server's time.
func (s *testServer) keyPackageWith(suite uint16, o mlstest.Options) ([]byte, kpd.Ref) {
	s.t.Helper()
	if o.NotBefore.IsZero() {
		o.NotBefore = s.now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = s.now.Add(30 * 24 * time.Hour)
	}
	bare, ref, err := mlstest.KeyPackage(s.suite(suite), o)
	if err != nil {
		s.t.Fatal(err)
	}
	return bare, kpd.RefOf(ref)
}

// welcome makes a Welcome of suite naming refs.
func (s *testServer) welcome(suite mls.Suite, refs ...kpd.Ref) []byte {
	s.t.Helper()
	raw := make([][]byte, len(refs))
	for i, r := range refs {
		b, err := r.Bytes()
		if err != nil {
			s.t.Fatal(err)
		}
		raw[i] = b
	}
	w, err := mlstest.Welcome(suite, raw...)
	if err != nil {
		s.t.Fatal(err)
	}
	return w
}

// do sends a raw request (for what the client cannot express) as did.
func (s *testServer) do(method, path, did, contentType string, body []byte, header ...string) *http.Response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.URL+path, bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if did != "" {
		req.Header.Set("Authorization", "Bearer "+did)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// wantCode asserts that err is a *client.Error with code and the status
// StatusOf gives it, and returns it.
func wantCode(t testing.TB, err error, code kpd.Code) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want a %s problem", err, code)
	}
	if e.Code != code || e.Status != httpapi.StatusOf(code) {
		t.Fatalf("err = %v (status %d), want code %s with status %d", err, e.Status, code, httpapi.StatusOf(code))
	}
	return e
}

// must returns v, failing the test on err: must(c.Publish(...))(t).
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// b64 is standard base64, for hand-written JSON bodies.
func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
