// Package auth turns HTTP requests into authenticated callers. Every mode of
// SPEC section 6 is an Authenticator; the HTTP layer asks it for the
// caller's DID and knows nothing of credentials.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/kpd-dir/kpd"
)

// Authenticator turns a request into the caller's DID.
type Authenticator interface {
	// Authenticate returns the DID of the request's caller. It fails with a
	// *kpd.Error of code Unauthorized when the credential is missing or not
	// valid, or Unavailable when it cannot be checked right now; any other
	// error is internal.
	Authenticate(r *http.Request) (did string, err error)
}

// TokenStore looks up API tokens by their SHA-256 hash. kpd.Store
// implements it.
type TokenStore interface {
	// TokenDID returns the DID of the token with this hash, or a *kpd.Error
	// of code Unauthorized when there is none.
	TokenDID(ctx context.Context, hash []byte) (string, error)
}

// TokenPrefix starts every token made by GenerateToken, so that a leaked
// token is easy to recognise (for example by secret scanners).
const TokenPrefix = "kpd_"

// maxCredentialLength bounds the credential accepted from a header: no
// valid token or DID is longer.
const maxCredentialLength = kpd.MaxDIDLength

// Reasons of token and dev authentication failures (kpd.Error.Reason).
const (
	ReasonMissingToken = "MissingToken"
	ReasonMalformed    = "Malformed"
	ReasonUnknownToken = "UnknownToken"
	// ReasonForeignHost: dev authentication refuses a request whose Host
	// is not a loopback name or address.
	ReasonForeignHost = "ForeignHost"
)

// unauthorized returns an Unauthorized error whose Reason names the check
// that failed; the message starts with it too.
func unauthorized(reason, format string, args ...any) *kpd.Error {
	return &kpd.Error{Code: kpd.CodeUnauthorized, Reason: reason, Message: reason + ": " + fmt.Sprintf(format, args...)}
}

// NewTokenAuth returns the token Authenticator: the caller presents
// `Authorization: Bearer <token>` and is the DID stored for the token's
// SHA-256 hash in s. Unknown, revoked or missing tokens are Unauthorized.
func NewTokenAuth(s TokenStore) Authenticator { return tokenAuth{store: s} }

type tokenAuth struct{ store TokenStore }

func (a tokenAuth) Authenticate(r *http.Request) (string, error) {
	tok, err := bearer(r)
	if err != nil {
		return "", err
	}
	did, err := a.store.TokenDID(r.Context(), HashToken(tok))
	switch kpd.ErrorCode(err) {
	case "":
		return did, nil
	case kpd.CodeUnauthorized, kpd.CodeNotFound:
		return "", unauthorized(ReasonUnknownToken, "unknown or revoked token")
	default:
		return "", err
	}
}

// NewDevAuth returns the development Authenticator: `Authorization: Bearer
// <did>` is taken as the caller, with no proof at all. The DID's syntax is
// checked (Unauthorized otherwise). Only for servers that listen on
// loopback addresses (see CheckLoopback). The request's Host must be a
// loopback name or address too (Unauthorized, ReasonForeignHost): a web
// page whose own host name an attacker points at 127.0.0.1 (DNS
// rebinding) sends its name, and could otherwise act as anyone on a
// developer's kpd.
func NewDevAuth() Authenticator { return devAuth{} }

type devAuth struct{}

func (devAuth) Authenticate(r *http.Request) (string, error) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if !loopbackHost(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")) {
		return "", unauthorized(ReasonForeignHost, "dev authentication answers only requests to a loopback host")
	}
	did, err := bearer(r)
	if err != nil {
		return "", err
	}
	if !kpd.ValidDID(did) {
		return "", unauthorized(ReasonMalformed, "dev authentication: the bearer credential is not a DID")
	}
	return did, nil
}

// bearer returns the credential of an `Authorization: Bearer <credential>`
// header; the scheme is case-insensitive (RFC 9110 section 11.1).
func bearer(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", unauthorized(ReasonMissingToken, "missing Authorization header")
	}
	scheme, cred, ok := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	if !ok || !strings.EqualFold(scheme, "Bearer") || cred == "" {
		return "", unauthorized(ReasonMalformed, "Authorization header is not 'Bearer <credential>'")
	}
	if len(cred) > maxCredentialLength {
		return "", unauthorized(ReasonMalformed, "bearer credential too long")
	}
	return cred, nil
}

// GenerateToken returns a new API token, TokenPrefix followed by 32 random
// bytes in unpadded base64url, and its SHA-256 hash, which is all a store
// keeps.
func GenerateToken() (token string, hash []byte, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, fmt.Errorf("generate token: %w", err)
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, HashToken(token), nil
}

// HashToken returns the SHA-256 of token, the form in which tokens are
// stored and looked up.
func HashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// TokenID returns a token's short public identifier: the hex of the first
// 8 bytes of its hash (all of it when shorter).
func TokenID(hash []byte) string {
	return hex.EncodeToString(hash[:min(len(hash), 8)])
}

// loopbackHost reports whether host (without port or brackets) is
// "localhost" or a loopback IP address.
func loopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return strings.EqualFold(host, "localhost") || (ip != nil && ip.IsLoopback())
}

// CheckLoopback returns an error unless listenAddr (host:port) names a
// loopback host: a loopback IP address or "localhost". An empty host
// listens on every interface and is refused.
func CheckLoopback(listenAddr string) error {
	host, _, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", listenAddr, err)
	}
	if loopbackHost(host) {
		return nil
	}
	if host == "" {
		return fmt.Errorf("listen address %q listens on every interface, not only loopback", listenAddr)
	}
	return fmt.Errorf("listen address %q is not a loopback address", listenAddr)
}
