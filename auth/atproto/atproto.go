// Package atproto authenticates callers by AT Protocol inter-service JWTs
// (SPEC section 6, `--auth atproto`).
//
// A caller asks its PDS for a service-auth token
// (com.atproto.server.getServiceAuth with aud = kpd's service DID and lxm =
// the operation) and sends it as `Authorization: Bearer <JWT>`. kpd checks
// the token's claims, resolves the caller's DID document (did:plc from a PLC
// directory, did:web from https://host/.well-known/did.json), and verifies
// the ES256 or ES256K signature with the document's #atproto Multikey.
//
// Every failure is a *kpd.Error. Its Code is Unauthorized; Unavailable
// when the check cannot be made right now (the DID resolver is down or
// kpd's budget of DID document fetches is spent, or the replay cache is
// full); or RateLimited when the issuer has too many unexpired tokens. Its
// Message starts with the failed check, one of the Reason constants,
// followed by ": " and a detail, for example "WrongAudience: aud is not
// this service's DID"; ReasonOf extracts it. The detail of a failed DID
// resolution is fixed for each Reason, so that callers learn nothing about
// the hosts kpd contacted; the cause goes to Config.Logger.
package atproto

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
)

// Reasons name the check that failed. They start the Message of every
// error Authenticate returns and are stable: clients may match on them.
const (
	// ReasonMissingToken: no `Authorization: Bearer <JWT>` header.
	ReasonMissingToken = "MissingToken"
	// ReasonMalformed: not a compact JWS with JSON header and claims, or a
	// required claim (iss, aud, exp) is missing, mistyped or invalid.
	ReasonMalformed = "Malformed"
	// ReasonAlgorithm: the header's alg is not ES256 or ES256K.
	ReasonAlgorithm = "Algorithm"
	// ReasonTokenType: the header's typ marks an OAuth access, refresh or
	// DPoP token, which is not a service-auth token.
	ReasonTokenType = "TokenType"
	// ReasonWrongAudience: aud is not the service DID.
	ReasonWrongAudience = "WrongAudience"
	// ReasonExpired: exp is not after now.
	ReasonExpired = "Expired"
	// ReasonLifetimeTooLong: exp is more than MaxTokenAge ahead.
	ReasonLifetimeTooLong = "LifetimeTooLong"
	// ReasonIssuedInFuture: iat is more than ClockSkew ahead.
	ReasonIssuedInFuture = "IssuedInFuture"
	// ReasonWrongLxm: lxm is present and is not the route's operation.
	ReasonWrongLxm = "WrongLxm"
	// ReasonUnknownDID: the DID's method is not did:plc or did:web, its
	// identifier or host is not valid or not lower case, or its directory
	// or host does not know it (HTTP 4xx, a redirect to another host, a
	// non-public address).
	ReasonUnknownDID = "UnknownDID"
	// ReasonBadDIDDocument: the DID document is too large, not JSON, names
	// another DID, or has no usable #atproto Multikey.
	ReasonBadDIDDocument = "BadDIDDocument"
	// ReasonBadSignature: the signature is not 64 bytes r||s, not low-S, or
	// does not verify with the DID's #atproto key (even after refetching
	// the DID document once).
	ReasonBadSignature = "BadSignature"
	// ReasonReplayed: a token with the same iss and jti was accepted
	// before and has not expired.
	ReasonReplayed = "Replayed"
	// ReasonResolverUnavailable (code Unavailable): the DID directory or
	// did:web host failed (network error, timeout, HTTP 5xx or 429).
	ReasonResolverUnavailable = "ResolverUnavailable"
	// ReasonResolverBusy (code Unavailable): the DID's key is not cached
	// (or is due for a refetch) and kpd's budget of DID document fetches
	// (Config.ResolveRate, ResolveBurst) is spent.
	ReasonResolverBusy = "ResolverBusy"
	// ReasonReplayCacheFull (code Unavailable): the replay cache holds
	// ReplayCacheSize unexpired tokens; new ones are refused until some
	// expire rather than forgetting tokens that could then be replayed.
	ReasonReplayCacheFull = "ReplayCacheFull"
	// ReasonTooManyTokens (code RateLimited): the issuer has
	// ReplayCachePerDID unexpired tokens with a jti; its new ones are
	// refused until some expire. Other issuers are not affected.
	ReasonTooManyTokens = "TooManyTokens"
)

// ReasonOf returns the Reason constant of err, an error returned by
// Authenticate (its kpd.Error Reason, which also starts its message), or ""
// when err is nil or carries none.
func ReasonOf(err error) string {
	var e *kpd.Error
	if !errors.As(err, &e) {
		return ""
	}
	return e.Reason
}

// unauthorized returns an Unauthorized error whose message starts with
// reason.
func unauthorized(reason, format string, args ...any) *kpd.Error {
	return &kpd.Error{Code: kpd.CodeUnauthorized, Reason: reason, Message: reason + ": " + fmt.Sprintf(format, args...)}
}

// unavailable returns an Unavailable error whose message starts with
// reason, asking the client to retry after retryAfter (at least 1 s).
func unavailable(reason string, retryAfter time.Duration, format string, args ...any) *kpd.Error {
	return retryLater(kpd.CodeUnavailable, reason, retryAfter, format, args...)
}

// rateLimited returns a RateLimited error whose message starts with
// reason, asking the client to retry after retryAfter (at least 1 s).
func rateLimited(reason string, retryAfter time.Duration, format string, args ...any) *kpd.Error {
	return retryLater(kpd.CodeRateLimited, reason, retryAfter, format, args...)
}

// retryLater returns an error of code whose message starts with reason,
// with RetryAfter the whole seconds of retryAfter rounded up (at least 1).
func retryLater(code kpd.Code, reason string, retryAfter time.Duration, format string, args ...any) *kpd.Error {
	secs := max(1, int((retryAfter+time.Second-1)/time.Second))
	return &kpd.Error{Code: code, Reason: reason, Message: reason + ": " + fmt.Sprintf(format, args...), RetryAfter: secs}
}

// Defaults of Config's zero fields.
const (
	DefaultPLCURL          = "https://plc.directory"
	DefaultMaxTokenAge     = 5 * time.Minute
	DefaultClockSkew       = 30 * time.Second
	DefaultCacheTTL        = 10 * time.Minute
	DefaultRefetchInterval = 30 * time.Second
	DefaultCacheSize       = 10_000
	DefaultReplayCacheSize = 100_000
	DefaultResolveTimeout  = 10 * time.Second
	// DefaultResolveRate refetches a full cache (DefaultCacheSize keys
	// every DefaultCacheTTL, 17 a second) with room to spare.
	DefaultResolveRate  = 20.0
	DefaultResolveBurst = 200
)

// Config configures an Authenticator. Zero fields take the documented
// defaults; only ServiceDID is required.
type Config struct {
	// ServiceDID is kpd's own DID (`--service-did`): a token's aud must
	// equal it exactly (a `#fragment`, if any, included).
	ServiceDID string
	// PLCURL is the PLC directory that resolves did:plc
	// (`--plc-url`, default DefaultPLCURL): a DID's document is
	// fetched from PLCURL + "/" + DID.
	PLCURL string
	// MaxTokenAge bounds exp: at most this far after now
	// (`--max-token-age`, default 5 min).
	MaxTokenAge time.Duration
	// ClockSkew is how far in the future a token's iat may be (default
	// 30 s), for issuers whose clock runs ahead.
	ClockSkew time.Duration
	// Clock is the time source; nil means time.Now.
	Clock kpd.Clock
	// HTTPClient fetches DID documents. Nil means kpd's own clients: each
	// request bounded by ResolveTimeout, the client for did:web connecting
	// only to public unicast addresses (no loopback, private, link-local
	// or unspecified ones) and ignoring proxy settings. Whatever the client,
	// redirects are followed only to the same scheme and host, at most 3.
	HTTPClient *http.Client
	// CacheTTL is how long a resolved #atproto key is used before its DID
	// document is fetched again (default 10 min).
	CacheTTL time.Duration
	// RefetchInterval is the least time between two fetches of one DID's
	// document (default 30 s). When a signature does not verify with the
	// cached key, the document is fetched again once (key rotation) unless
	// it was fetched less than RefetchInterval ago; so forged tokens cannot
	// make kpd hammer a directory. Failed resolutions (unknown DID, bad
	// document) are cached this long too.
	RefetchInterval time.Duration
	// CacheSize bounds the number of DIDs whose keys are cached (default
	// 10,000); when full, expired entries, then cached failures, then the
	// least recently used keys are dropped.
	CacheSize int
	// ReplayCacheSize bounds the number of unexpired jti values remembered
	// (default 100,000). Each is kept until its token's exp, at most
	// MaxTokenAge. When it is full, tokens with a jti are refused with
	// Unavailable (ReasonReplayCacheFull) until entries expire: dropping a
	// live entry would let its token be replayed.
	ReplayCacheSize int
	// ReplayCachePerDID bounds the unexpired jti values remembered for one
	// issuer DID (default ReplayCacheSize/100, at least 1: 1,000, about
	// 16 tokens a second with 60 s tokens). An issuer at the bound has its
	// tokens with a jti refused with RateLimited (ReasonTooManyTokens)
	// until some expire, so that one DID cannot fill the replay cache for
	// everyone: that takes 100 DIDs whose keys sign tokens.
	ReplayCachePerDID int
	// ResolveTimeout bounds one DID document fetch (default 10 s).
	ResolveTimeout time.Duration
	// ResolveRate and ResolveBurst budget the DID document fetches, of all
	// DIDs together: a token bucket of ResolveBurst fetches (default 200)
	// refilled at ResolveRate fetches a second (default 20). A token whose
	// DID's key is not cached, or is due for a refetch, is refused with
	// Unavailable (ReasonResolverBusy) while the bucket is empty, so that
	// unauthenticated callers, whose tokens need no valid signature to
	// make kpd resolve their iss, cannot make kpd send unbounded requests
	// to the PLC directory or to hosts of their choosing. Tokens of DIDs
	// with a cached key are not affected.
	ResolveRate  float64
	ResolveBurst int
	// Logger receives a line per failed DID resolution, with the DID and
	// the cause that the caller is not told: warn when the directory or
	// host failed (ReasonResolverUnavailable), debug otherwise; and a
	// debug line per token refused with ReasonResolverBusy. It never sees
	// tokens. The zero Logger discards everything.
	Logger zerolog.Logger
}

// Authenticator checks AT Protocol service-auth tokens. It implements the
// auth.Authenticator interface and is safe for concurrent use.
type Authenticator struct {
	cfg    Config
	keys   *keyCache
	replay *replayCache
}

// New returns an Authenticator for cfg. It fails if ServiceDID is not a DID
// (a `#fragment` is allowed), PLCURL is not an http(s) URL, or a duration or
// size is negative.
func New(cfg Config) (*Authenticator, error) {
	if base, _, _ := strings.Cut(cfg.ServiceDID, "#"); !kpd.ValidDID(base) {
		return nil, fmt.Errorf("atproto: service DID %q is not a DID", cfg.ServiceDID)
	}
	if cfg.PLCURL == "" {
		cfg.PLCURL = DefaultPLCURL
	}
	u, err := url.Parse(cfg.PLCURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("atproto: PLC URL %q is not an http(s) URL", cfg.PLCURL)
	}
	cfg.PLCURL = strings.TrimRight(cfg.PLCURL, "/")
	if err := errors.Join(
		setDefault(&cfg.MaxTokenAge, DefaultMaxTokenAge, "max token age"),
		setDefault(&cfg.ClockSkew, DefaultClockSkew, "clock skew"),
		setDefault(&cfg.CacheTTL, DefaultCacheTTL, "cache TTL"),
		setDefault(&cfg.RefetchInterval, DefaultRefetchInterval, "refetch interval"),
		setDefault(&cfg.ResolveTimeout, DefaultResolveTimeout, "resolve timeout"),
		setDefault(&cfg.CacheSize, DefaultCacheSize, "cache size"),
		setDefault(&cfg.ReplayCacheSize, DefaultReplayCacheSize, "replay cache size"),
		setDefault(&cfg.ResolveRate, DefaultResolveRate, "resolve rate"),
		setDefault(&cfg.ResolveBurst, DefaultResolveBurst, "resolve burst"),
	); err != nil {
		return nil, err
	}
	switch {
	case cfg.ReplayCachePerDID < 0:
		return nil, fmt.Errorf("atproto: replay cache entries per DID %d is negative", cfg.ReplayCachePerDID)
	case cfg.ReplayCachePerDID == 0:
		cfg.ReplayCachePerDID = max(1, cfg.ReplayCacheSize/100)
	}
	res := newResolver(cfg)
	return &Authenticator{
		cfg:    cfg,
		keys:   newKeyCache(res.resolve, cfg),
		replay: newReplayCache(cfg.ReplayCacheSize, cfg.ReplayCachePerDID),
	}, nil
}

// setDefault sets *v to def when it is zero; negative values (and NaN or
// infinite ones) are an error.
func setDefault[T time.Duration | int | float64](v *T, def T, name string) error {
	if *v < 0 || math.IsNaN(float64(*v)) || math.IsInf(float64(*v), 0) {
		return fmt.Errorf("atproto: %s %v is negative or not finite", name, *v)
	}
	if *v == 0 {
		*v = def
	}
	return nil
}

// Authenticate returns the DID of the request's caller: the iss of a valid
// service-auth token, without its `#fragment`. Checks, cheapest first:
// token syntax and alg, iss, aud, exp, iat, lxm (against
// kpd.OperationFrom(r.Context())), signature shape and low-S, the DID's
// syntax, the signature against the DID's #atproto key, and jti replay. It
// fails with Unauthorized; Unavailable (with RetryAfter) when the DID
// cannot be resolved right now or the replay cache is full; or RateLimited
// (with RetryAfter) when the issuer has ReplayCachePerDID unexpired
// tokens. The message starts with the Reason.
func (a *Authenticator) Authenticate(r *http.Request) (string, error) {
	raw, err := bearerToken(r)
	if err != nil {
		return "", err
	}
	tok, err := parseToken(raw)
	if err != nil {
		return "", err
	}
	now := a.cfg.Clock.Now()
	if err := a.checkClaims(tok, now, kpd.OperationFrom(r.Context())); err != nil {
		return "", err
	}
	if err := tok.curve.checkSignature(tok.signature); err != nil {
		return "", err
	}
	// Before the cache, so that made-up DIDs of the wrong shape cost no
	// fetch and no cache entry.
	if _, err := checkDID(tok.did); err != nil {
		return "", err
	}
	if err := a.verify(r.Context(), tok); err != nil {
		return "", err
	}
	if tok.claims.Jti != nil {
		id := sha256.Sum256([]byte(tok.did + "\x00" + *tok.claims.Jti))
		if err := a.replay.add(tok.did, id, tok.exp, now); err != nil {
			return "", err
		}
	}
	return tok.did, nil
}

// checkClaims checks aud, exp, iat and lxm at time now for operation op.
func (a *Authenticator) checkClaims(tok *token, now time.Time, op string) error {
	c := &tok.claims
	switch {
	case c.Aud != a.cfg.ServiceDID:
		return unauthorized(ReasonWrongAudience, "aud %q is not this service's DID", clip(c.Aud))
	case !tok.exp.After(now):
		return unauthorized(ReasonExpired, "the token expired at %s", tok.exp.UTC().Format(time.RFC3339))
	case tok.exp.Sub(now) > a.cfg.MaxTokenAge:
		return unauthorized(ReasonLifetimeTooLong, "exp is more than %v ahead", a.cfg.MaxTokenAge)
	case tok.iat != nil && tok.iat.Sub(now) > a.cfg.ClockSkew:
		return unauthorized(ReasonIssuedInFuture, "iat is more than %v ahead", a.cfg.ClockSkew)
	case c.Lxm != nil && *c.Lxm != op:
		return unauthorized(ReasonWrongLxm, "lxm %q does not allow operation %q", clip(*c.Lxm), op)
	}
	return nil
}

// verify checks tok's signature with the issuer's #atproto key. When the
// cached key does not verify it, the DID document is fetched again (at most
// once per RefetchInterval) in case the key was rotated.
func (a *Authenticator) verify(ctx context.Context, tok *token) error {
	key, err := a.keys.lookup(ctx, tok.did, a.cfg.CacheTTL)
	if err != nil {
		return err
	}
	if key.verifies(tok) {
		return nil
	}
	fresh, err := a.keys.lookup(ctx, tok.did, a.cfg.RefetchInterval)
	if err != nil {
		return err
	}
	if fresh != key && fresh.verifies(tok) {
		return nil
	}
	return unauthorized(ReasonBadSignature, "the signature does not verify with the #atproto key of %s", tok.did)
}

// clip shortens an untrusted string before it is quoted in a message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
