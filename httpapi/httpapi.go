// Package httpapi is kpd's HTTP API (SPEC section 5): a gorilla/mux router
// with one file per resource, middleware for request ids, logging, body
// limits and panic recovery, JSON and CBOR codecs, and RFC 9457 problem
// documents for errors.
//
// Every /v1 route authenticates its caller with the configured
// auth.Authenticator; `{device}` path segments always name one of the
// caller's own devices. The handlers validate input (KeyPackages and
// Welcomes with the mls package) and leave state changes to the kpd.Store.
package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/mls"
)

// Limits are the request size limits of SPEC section 7. A zero field means
// the SPEC default.
type Limits struct {
	// MaxBodyBytes caps a request body (default 8 MiB); beyond it the
	// request fails with PayloadTooLarge.
	MaxBodyBytes int64
	// MaxKeyPackageBytes caps one published KeyPackage (default 64 KiB);
	// a larger one is a per-item PayloadTooLarge.
	MaxKeyPackageBytes int
	// MaxWelcomeBytes caps one posted Welcome (default 4 MiB).
	MaxWelcomeBytes int
	// MaxWelcomeMembers caps the new_member entries of one posted Welcome
	// (default 10,000; at most kv.MaxWelcomeRefs). A stored Welcome keeps
	// an entry for each, so this bounds its record.
	MaxWelcomeMembers int
	// MaxPublishBatch caps the KeyPackages of one publish (default 100).
	MaxPublishBatch int
	// MaxClaimTargets caps the targets of one claim (default 100).
	MaxClaimTargets int
	// MaxClaimDevices caps the devices one claim target names, and the
	// exclude_devices of a claim (default 100, five times SPEC's default
	// devices per DID); more is PayloadTooLarge. Each named device is
	// looked up in the claim's write transaction and, when unknown,
	// answered with a `missing` entry, so this bounds both.
	MaxClaimDevices int
	// MaxRefs caps the refs of one delete or sync (default 10,000); more
	// is PayloadTooLarge. A sync looks each one up in its write
	// transaction.
	MaxRefs int
	// MaxListWelcomes caps the Welcomes one listing returns; it is also the
	// page size when the request names none (default 100).
	MaxListWelcomes int
}

// DefaultMaxWelcomeMembers is the default of Limits.MaxWelcomeMembers.
const DefaultMaxWelcomeMembers = 10000

// Defaults of Limits.MaxClaimDevices and Limits.MaxRefs.
const (
	DefaultMaxClaimDevices = 100
	DefaultMaxRefs         = 10_000
)

// maxItemErrors caps the per-item errors one problem lists for a request
// whose lists may be long (the refs of delete and sync): its detail counts
// them all, so that an answer stays small whatever the request's size.
const maxItemErrors = 100

// withDefaults returns l with every zero (or negative) field set to its
// SPEC default.
func (l Limits) withDefaults() Limits {
	return Limits{
		MaxBodyBytes:       orDefault(l.MaxBodyBytes, 8<<20),
		MaxKeyPackageBytes: orDefault(l.MaxKeyPackageBytes, 64<<10),
		MaxWelcomeBytes:    orDefault(l.MaxWelcomeBytes, 4<<20),
		MaxWelcomeMembers:  orDefault(l.MaxWelcomeMembers, DefaultMaxWelcomeMembers),
		MaxPublishBatch:    orDefault(l.MaxPublishBatch, 100),
		MaxClaimTargets:    orDefault(l.MaxClaimTargets, 100),
		MaxClaimDevices:    orDefault(l.MaxClaimDevices, DefaultMaxClaimDevices),
		MaxRefs:            orDefault(l.MaxRefs, DefaultMaxRefs),
		MaxListWelcomes:    orDefault(l.MaxListWelcomes, 100),
	}
}

func orDefault[T int | int64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Policy is the KeyPackage validation policy (SPEC section 3) beyond RFC
// 9420. Its fields are passed to mls.Registry.ValidateKeyPackages unchanged:
// a zero MaxLifetime means unlimited and a zero ClockSkew allows none, so
// callers pass the defaults (mls.DefaultMaxLifetime, mls.DefaultClockSkew)
// explicitly.
type Policy struct {
	// MaxLifetime rejects a not_after further than this from now (0 =
	// unlimited).
	MaxLifetime time.Duration
	// ClockSkew is how far in the future a not_before may be.
	ClockSkew time.Duration
	// AllowX509 accepts x509 credentials.
	AllowX509 bool
	// SkipIdentityCheck accepts basic credentials that do not name the
	// publishing DID (only for test vectors).
	SkipIdentityCheck bool
}

// Config is what New needs. Store, Auth and Registry are required.
type Config struct {
	Store    kpd.Store
	Auth     auth.Authenticator
	Registry *mls.Registry
	Policy   Policy
	Limits   Limits
	// Clock is the time used to validate KeyPackage lifetimes; nil means
	// time.Now.
	Clock kpd.Clock
	// Logger receives one line per request and every internal error.
	Logger zerolog.Logger
	// Ready reports whether the server can serve (GET /readyz); nil means
	// always ready.
	Ready func(ctx context.Context) error
	// RateLimits, when set, is charged before each publish and claim
	// (SPEC section 7); nil means no rate limits.
	RateLimits RateLimiter
	// Metrics, when set, hears about every answered request.
	Metrics RequestObserver
	// MetricsHandler, when set, is served without authentication at GET
	// /metrics (MetricsPath).
	MetricsHandler http.Handler
	// MaxWaiters caps the listings that wait for a Welcome at once
	// (?wait=); 0 means DefaultMaxWaiters. Beyond it a listing with no
	// pending Welcome fails at once with 503 Unavailable and Retry-After.
	MaxWaiters int
	// MaxWaitersPerDID caps the listings of one caller DID that wait at
	// once, so that one DID cannot take all MaxWaiters; 0 means
	// DefaultMaxWaitersPerDID. Beyond it that DID's listing with no
	// pending Welcome fails at once with 503 Unavailable and Retry-After.
	MaxWaitersPerDID int
	// Done, when closed, ends every waiting listing (it answers with what
	// is pending, usually nothing): close it when the server starts to
	// shut down, so that long-polls do not hold up the drain. nil means
	// listings wait until their wait ends or the client goes away.
	Done <-chan struct{}
}

// RequestObserver hears about every answered request: its route template
// ("unmatched" when no route matched), status and duration.
// *metrics.Metrics implements it.
type RequestObserver interface {
	ObserveRequest(route string, status int, d time.Duration)
	// LimitExceeded counts a request refused for a size or count limit
	// (kpd.Error.Limit).
	LimitExceeded(limit string)
}

// RateLimiter charges requests against rate limits. Its methods return nil,
// or a *kpd.Error (RateLimited with RetryAfter, or PayloadTooLarge for a
// request larger than a limit's burst). ratelimit.Policy implements it.
type RateLimiter interface {
	// Publish charges n KeyPackages published by did.
	Publish(did string, n int) error
	// Claim charges one claim by claimer of the target DIDs.
	Claim(claimer string, targets []string) error
}

// server holds the configuration that the handlers share. It is never
// modified after New.
type server struct {
	store    kpd.Store
	auth     auth.Authenticator
	registry *mls.Registry
	policy   Policy
	limits   Limits
	clock    kpd.Clock
	log      zerolog.Logger
	ready    func(ctx context.Context) error
	rates    RateLimiter
	metrics  RequestObserver
	waiters  *waiterLimit
	done     <-chan struct{}
	router   *mux.Router
}

// New returns the HTTP handler of the API: every /v1 route of SPEC section
// 5 except the admin routes, plus GET /healthz, GET /readyz and, with
// Config.MetricsHandler, GET /metrics.
func New(cfg Config) http.Handler {
	s := &server{
		store:    cfg.Store,
		auth:     cfg.Auth,
		registry: cfg.Registry,
		policy:   cfg.Policy,
		limits:   cfg.Limits.withDefaults(),
		clock:    cfg.Clock,
		log:      cfg.Logger,
		ready:    cfg.Ready,
		rates:    cfg.RateLimits,
		metrics:  cfg.Metrics,
		waiters:  newWaiterLimit(cfg.MaxWaiters, cfg.MaxWaitersPerDID),
		done:     cfg.Done,
		router:   newRouter(),
	}
	s.router.NotFoundHandler = http.HandlerFunc(s.notFound)
	s.router.MethodNotAllowedHandler = http.HandlerFunc(s.methodNotAllowed)
	s.registerHealth()
	s.registerMetrics(cfg.MetricsHandler)
	s.registerKeyPackages()
	s.registerDevices()
	s.registerClaims()
	s.registerWelcomes()
	return s.requestID(s.logRequests(s.recoverPanics(s.checkSegments(s.limitBody(s.router)))))
}

// request is an authenticated API request with its validated path
// parameters.
type request struct {
	*http.Request
	// caller is the authenticated DID.
	caller string
	// device is the {device} path segment (one of the caller's devices),
	// "" on routes without one.
	device string
	// welcomeID is the {welcome_id} path segment, "" on routes without one.
	welcomeID string
}

// handler serves one authenticated route. An error it returns is written
// as a problem document (see writeError).
type handler func(w http.ResponseWriter, r *request) error

// handle registers an authenticated route: it names the operation in the
// request context (for authenticators that check it), authenticates the
// caller, validates the path parameters and calls h.
func (s *server) handle(method, path, op string, h handler) {
	s.handlePublic(method, path, func(w http.ResponseWriter, r *http.Request) error {
		req, err := s.authorize(r.WithContext(kpd.WithOperation(r.Context(), op)))
		if err != nil {
			return err
		}
		infoFrom(r.Context()).caller = req.caller
		return h(w, req)
	})
}

// authorize authenticates r's caller and validates its path parameters.
func (s *server) authorize(r *http.Request) (*request, error) {
	caller, err := s.auth.Authenticate(r)
	if err != nil {
		return nil, err
	}
	vars := mux.Vars(r)
	req := &request{Request: r, caller: caller, device: vars["device"], welcomeID: vars["welcome_id"]}
	if _, ok := vars["device"]; ok && !kpd.ValidDevice(req.device) {
		return nil, kpd.Errorf(kpd.CodeBadRequest, "the device in the path is not a device name (1-64 characters of A-Z a-z 0-9 . _ ~ -)")
	}
	if _, ok := vars["welcome_id"]; ok && !validWelcomeID(req.welcomeID) {
		return nil, kpd.Errorf(kpd.CodeBadRequest, "the welcome_id in the path is not 32 lowercase hex digits")
	}
	return req, nil
}

// handlePublic registers a route without authentication. It records the
// route template for the request log and writes h's error as a problem.
func (s *server) handlePublic(method, path string, h func(w http.ResponseWriter, r *http.Request) error) {
	s.router.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		infoFrom(r.Context()).route = path
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})).Methods(method)
}

// notFound answers requests that match no route.
func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, kpd.Errorf(kpd.CodeNotFound, "no route for %s %s", r.Method, r.URL.Path))
}

// methodNotAllowed answers a known path with a method it does not serve:
// 405 with an Allow header listing the methods it does serve.
func (s *server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		var match mux.RouteMatch
		if s.router.Match(probe, &match) && match.MatchErr == nil {
			allow = append(allow, m)
		}
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	s.writeError(w, r, &problem{
		Status: http.StatusMethodNotAllowed,
		Code:   kpd.CodeBadRequest,
		Detail: fmt.Sprintf("%s is not allowed here; allowed: %s", r.Method, strings.Join(allow, ", ")),
	})
}

// validWelcomeID reports whether s has the form of kpd.WelcomeID: 32
// lowercase hex digits.
func validWelcomeID(s string) bool {
	return len(s) == 32 && isLowerHex(s)
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// NewServer returns an http.Server for h with kpd's timeouts: 10 s to read
// the request headers, 60 s to read a request, 90 s to write a response (a
// 60 s long-poll plus a slow client), 120 s of idle keep-alive, and 64 KiB
// of headers. h should not clean paths: http.ServeMux redirects a path
// with a "." or ".." segment to another route, where the handlers of New
// and NewAdmin answer it 400 (see WithAdmin).
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      90 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// newRouter returns a router that matches paths as they come: gorilla/mux
// would otherwise clean a path with an empty segment ("//") and answer it
// 301 to the cleaned path, which may be another route.
func newRouter() *mux.Router { return mux.NewRouter().SkipClean(true) }

// WithAdmin serves the paths under AdminPrefix with admin and every other
// path with api, as they come: unlike http.ServeMux it neither cleans
// paths nor redirects.
func WithAdmin(api, admin http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, AdminPrefix) {
			admin.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

// checkSegments answers 400 BadRequest for a request whose path has a "."
// or ".." segment (also percent-encoded), or an encoded slash ("%2F"): no
// device name or Welcome ID holds one (kpd.ValidDevice), and each would
// take the request to another route: routers clean dot segments, and the
// router matches the decoded path, where "dev1%2Fkey-packages" is two
// segments. It runs inside the request id, logging and metrics middleware,
// so such a request is logged and counted like any other.
func (s *server) checkSegments(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for seg := range strings.SplitSeq(r.URL.Path, "/") {
			if seg == "." || seg == ".." {
				s.writeError(w, r, kpd.Errorf(kpd.CodeBadRequest, `a path segment may not be "." or "..": they are not device names`))
				return
			}
		}
		if strings.Contains(strings.ToUpper(r.URL.EscapedPath()), "%2F") {
			s.writeError(w, r, kpd.Errorf(kpd.CodeBadRequest, `a path segment may not hold an encoded "/": no device name does`))
			return
		}
		next.ServeHTTP(w, r)
	})
}
