package atproto

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k256ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
)

const serviceDID = "did:web:kpd.example.com"

// testKey is a signing key with its Multikey form.
type testKey struct {
	alg      string
	multikey string
	// sign returns a low-S r||s signature of a SHA-256 digest.
	sign func(digest []byte) []byte
}

func newP256Key(t *testing.T) *testKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := priv.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	compressed := append([]byte{2 + raw[64]&1}, raw[1:33]...)
	return &testKey{
		alg:      "ES256",
		multikey: "z" + encodeBase58(append([]byte{0x80, 0x24}, compressed...)),
		sign: func(digest []byte) []byte {
			r, s, err := ecdsa.Sign(rand.Reader, priv, digest)
			if err != nil {
				t.Fatal(err)
			}
			if s.Cmp(p256HalfOrder) > 0 {
				s.Sub(p256Order, s)
			}
			sig := make([]byte, 64)
			r.FillBytes(sig[:32])
			s.FillBytes(sig[32:])
			return sig
		},
	}
}

func newK256Key(t *testing.T) *testKey {
	t.Helper()
	priv, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return &testKey{
		alg:      "ES256K",
		multikey: "z" + encodeBase58(append([]byte{0xe7, 0x01}, priv.PubKey().SerializeCompressed()...)),
		sign: func(digest []byte) []byte {
			sig := k256ecdsa.Sign(priv, digest)
			r, s := sig.R(), sig.S()
			rb, sb := r.Bytes(), s.Bytes()
			return append(rb[:], sb[:]...)
		},
	}
}

// encodeBase58 is the inverse of decodeBase58.
func encodeBase58(b []byte) string {
	zeros := 0
	for zeros < len(b) && b[zeros] == 0 {
		zeros++
	}
	n := new(big.Int).SetBytes(b)
	var out []byte
	mod, base := new(big.Int), big.NewInt(58)
	for n.Sign() > 0 {
		n.DivMod(n, base, mod)
		out = append(out, base58Alphabet[mod.Int64()])
	}
	out = append(out, strings.Repeat("1", zeros)...)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return string(out)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func b64JSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64(b)
}

// jwt signs a token with header {"alg": k.alg, "typ": "JWT"} and claims.
func (k *testKey) jwt(t *testing.T, claims map[string]any) string {
	t.Helper()
	input := b64JSON(t, map[string]any{"alg": k.alg, "typ": "JWT"}) + "." + b64JSON(t, claims)
	digest := sha256.Sum256([]byte(input))
	return input + "." + b64(k.sign(digest[:]))
}

// didDocument returns a DID document whose #atproto key is k.
func didDocument(did string, k *testKey) []byte {
	b, _ := json.Marshal(map[string]any{
		"@context": []string{"https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"},
		"id":       did,
		"verificationMethod": []map[string]any{{
			"id":                 did + "#atproto",
			"type":               "Multikey",
			"controller":         did,
			"publicKeyMultibase": k.multikey,
		}},
	})
	return b
}

// directory serves DID documents: as a PLC directory (GET /<did>) and as
// did:web hosts. It counts the fetches of each DID.
type directory struct {
	mu      sync.Mutex
	docs    map[string][]byte
	fetches map[string]int
	delay   time.Duration
}

func (d *directory) set(did string, doc []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.docs[did] = doc
}

func (d *directory) count(did string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fetches[did]
}

// serve answers with did's document, or 404.
func (d *directory) serve(w http.ResponseWriter, did string) {
	d.mu.Lock()
	d.fetches[did]++
	doc, ok := d.docs[did]
	delay := d.delay
	d.mu.Unlock()
	time.Sleep(delay)
	if !ok {
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "application/did+json")
	w.Write(doc)
}

// env is a PLC directory on loopback and an Authenticator using it.
type env struct {
	t     *testing.T
	clock *testkit.Clock
	dir   *directory
	plc   *httptest.Server
	// client trusts the TLS test servers that host did:web documents.
	client *http.Client
	auth   *Authenticator
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{
		t:     t,
		clock: testkit.NewClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)),
		dir:   &directory{docs: map[string][]byte{}, fetches: map[string]int{}},
	}
	e.plc = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.dir.serve(w, strings.TrimPrefix(r.URL.Path, "/"))
	}))
	t.Cleanup(e.plc.Close)
	tlsProbe := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(tlsProbe.Close)
	e.client = tlsProbe.Client() // every httptest TLS server shares its certificate
	cfg.ServiceDID = serviceDID
	cfg.PLCURL = e.plc.URL
	cfg.Clock = e.clock.Now
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = e.client
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.auth = a
	return e
}

var plcCounter atomic.Int64

// newPLCDID returns a fresh did:plc whose document has key k (nil: none is
// served).
func (e *env) newPLCDID(k *testKey) string {
	const b32 = "abcdefghijklmnopqrstuvwxyz234567"
	n := plcCounter.Add(1)
	id := []byte("aaaaaaaaaaaaaaaaaaaaaaaa")
	for i := len(id) - 1; n > 0; i-- {
		id[i] = b32[n%32]
		n /= 32
	}
	did := "did:plc:" + string(id)
	if k != nil {
		e.dir.set(did, didDocument(did, k))
	}
	return did
}

// newWebHost starts a TLS server on loopback with handler h and returns its
// did:web.
func (e *env) newWebHost(h http.Handler) string {
	srv := httptest.NewTLSServer(h)
	e.t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		e.t.Fatal(err)
	}
	return "did:web:" + strings.ReplaceAll(u.Host, ":", "%3A")
}

// newWebDID returns a did:web whose document, served by e.dir, has key k.
func (e *env) newWebDID(k *testKey) string {
	var did string
	did = e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/did.json" {
			http.NotFound(w, r)
			return
		}
		e.dir.serve(w, did)
	}))
	e.dir.set(did, didDocument(did, k))
	return did
}

// claims returns valid claims for a token from iss for operation
// kpd.OpClaimKeyPackages.
func (e *env) claims(iss string) map[string]any {
	now := e.clock.Now().Unix()
	return map[string]any{
		"iss": iss,
		"aud": serviceDID,
		"exp": now + 60,
		"iat": now,
		"lxm": kpd.OpClaimKeyPackages,
		"jti": hex.EncodeToString(randomBytes(e.t, 16)),
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// request returns a request for operation op with the token as bearer
// credential.
func request(op, tok string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/key-packages/claim", nil)
	r = r.WithContext(kpd.WithOperation(r.Context(), op))
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return r
}

// authenticate authenticates tok for kpd.OpClaimKeyPackages.
func (e *env) authenticate(tok string) (string, error) {
	return e.auth.Authenticate(request(kpd.OpClaimKeyPackages, tok))
}

// wantOK fails unless tok authenticates as did.
func (e *env) wantOK(tok, did string) {
	e.t.Helper()
	got, err := e.authenticate(tok)
	if err != nil || got != did {
		e.t.Fatalf("Authenticate = %q, %v; want %q", got, err, did)
	}
}

// wantFail fails unless err has code and reason.
func wantFail(t *testing.T, err error, code kpd.Code, reason string) {
	t.Helper()
	if kpd.ErrorCode(err) != code || ReasonOf(err) != reason {
		t.Fatalf("error = %v; want code %s, reason %s", err, code, reason)
	}
	if !strings.HasPrefix(kpd.ErrorMessage(err), reason+": ") {
		t.Fatalf("message %q does not start with %q", kpd.ErrorMessage(err), reason+": ")
	}
}

func TestValidTokens(t *testing.T) {
	e := newEnv(t, Config{})
	for _, k := range []*testKey{newP256Key(t), newK256Key(t)} {
		t.Run(k.alg+"/plc", func(t *testing.T) {
			did := e.newPLCDID(k)
			e.wantOK(k.jwt(t, e.claims(did)), did)
		})
		t.Run(k.alg+"/web", func(t *testing.T) {
			did := e.newWebDID(k)
			e.wantOK(k.jwt(t, e.claims(did)), did)
		})
	}
	t.Run("fragment, no lxm, no jti, no iat", func(t *testing.T) {
		k := newK256Key(t)
		did := e.newPLCDID(k)
		c := e.claims(did + "#atproto_pds")
		delete(c, "lxm")
		delete(c, "jti")
		delete(c, "iat")
		tok := k.jwt(t, c)
		e.wantOK(tok, did)
		// Without a jti there is nothing to remember: the token is reusable
		// until it expires.
		e.wantOK(tok, did)
	})
	t.Run("iat within clock skew", func(t *testing.T) {
		k := newP256Key(t)
		did := e.newPLCDID(k)
		c := e.claims(did)
		c["iat"] = e.clock.Now().Add(DefaultClockSkew).Unix()
		e.wantOK(k.jwt(t, c), did)
	})
}

func TestRejectedTokens(t *testing.T) {
	e := newEnv(t, Config{})
	k := newK256Key(t)
	did := e.newPLCDID(k)
	p := newP256Key(t)
	pdid := e.newPLCDID(p)
	now := e.clock.Now()
	with := func(key *testKey, iss string, change func(map[string]any)) string {
		c := e.claims(iss)
		change(c)
		return key.jwt(t, c)
	}
	valid := func(map[string]any) {}
	rawToken := func(header map[string]any, claims map[string]any, sig []byte) string {
		return b64JSON(t, header) + "." + b64JSON(t, claims) + "." + b64(sig)
	}
	// withSig replaces a token's signature by change(signature).
	withSig := func(tok string, change func(sig []byte) []byte) string {
		i := strings.LastIndexByte(tok, '.')
		sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
		if err != nil {
			t.Fatal(err)
		}
		return tok[:i+1] + b64(change(sig))
	}
	// highS replaces a valid token's s by n - s: the signature still
	// verifies mathematically, but is malleated.
	highS := func(tok string, order *big.Int) string {
		return withSig(tok, func(sig []byte) []byte {
			s := new(big.Int).SetBytes(sig[32:])
			s.Sub(order, s).FillBytes(sig[32:])
			return sig
		})
	}
	hs256 := func() string {
		input := b64JSON(t, map[string]any{"alg": "HS256", "typ": "JWT"}) + "." + b64JSON(t, e.claims(did))
		mac := hmac.New(sha256.New, []byte(k.multikey)) // key-confusion attempt
		mac.Write([]byte(input))
		return input + "." + b64(mac.Sum(nil))
	}

	tests := []struct {
		name   string
		tok    string
		code   kpd.Code
		reason string
	}{
		{"no token", "", kpd.CodeUnauthorized, ReasonMissingToken},
		{"wrong signature", with(newK256Key(t), did, valid), kpd.CodeUnauthorized, ReasonBadSignature},
		{"key of the other curve", with(p, did, valid), kpd.CodeUnauthorized, ReasonBadSignature},
		{"high-S ES256K", highS(with(k, did, valid), secp256k1.Params().N), kpd.CodeUnauthorized, ReasonBadSignature},
		{"high-S ES256", highS(with(p, pdid, valid), p256Order), kpd.CodeUnauthorized, ReasonBadSignature},
		{"short signature", withSig(with(k, did, valid), func(sig []byte) []byte { return sig[:63] }), kpd.CodeUnauthorized, ReasonBadSignature},
		{"DER signature", withSig(with(k, did, valid), func(sig []byte) []byte { return append([]byte{0x30, 0x44, 0x02, 0x20}, sig...) }), kpd.CodeUnauthorized, ReasonBadSignature},
		{"r out of range", withSig(with(p, pdid, valid), func(sig []byte) []byte { p256Order.FillBytes(sig[:32]); return sig }), kpd.CodeUnauthorized, ReasonBadSignature},
		{"flipped bit", withSig(with(p, pdid, valid), func(sig []byte) []byte { sig[5] ^= 1; return sig }), kpd.CodeUnauthorized, ReasonBadSignature},
		{"wrong aud", with(k, did, func(c map[string]any) { c["aud"] = "did:web:other.example.com" }), kpd.CodeUnauthorized, ReasonWrongAudience},
		{"expired", with(k, did, func(c map[string]any) { c["exp"] = now.Unix() }), kpd.CodeUnauthorized, ReasonExpired},
		{"too long-lived", with(k, did, func(c map[string]any) { c["exp"] = now.Add(DefaultMaxTokenAge + time.Second).Unix() }), kpd.CodeUnauthorized, ReasonLifetimeTooLong},
		{"iat in the future", with(k, did, func(c map[string]any) { c["iat"] = now.Add(DefaultClockSkew + time.Second).Unix() }), kpd.CodeUnauthorized, ReasonIssuedInFuture},
		{"wrong lxm", with(k, did, func(c map[string]any) { c["lxm"] = kpd.OpPublishKeyPackages }), kpd.CodeUnauthorized, ReasonWrongLxm},
		{"unknown DID", with(k, e.newPLCDID(nil), valid), kpd.CodeUnauthorized, ReasonUnknownDID},
		{"unsupported DID method", with(k, "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", valid), kpd.CodeUnauthorized, ReasonUnknownDID},
		{"invalid did:plc", with(k, "did:plc:short", valid), kpd.CodeUnauthorized, ReasonUnknownDID},
		{"did:web with a path", with(k, "did:web:example.com:user:alice", valid), kpd.CodeUnauthorized, ReasonUnknownDID},
		{"did:web with a bad port", with(k, "did:web:example.com%3A99999", valid), kpd.CodeUnauthorized, ReasonUnknownDID},
		{"iss not a DID", with(k, "alice", valid), kpd.CodeUnauthorized, ReasonMalformed},
		{"no exp", with(k, did, func(c map[string]any) { delete(c, "exp") }), kpd.CodeUnauthorized, ReasonMalformed},
		{"exp not a number", with(k, did, func(c map[string]any) { c["exp"] = "soon" }), kpd.CodeUnauthorized, ReasonMalformed},
		{"no aud", with(k, did, func(c map[string]any) { delete(c, "aud") }), kpd.CodeUnauthorized, ReasonMalformed},
		{"one part", "abc", kpd.CodeUnauthorized, ReasonMalformed},
		{"two parts", "abc.def", kpd.CodeUnauthorized, ReasonMalformed},
		{"header not base64url", "a*b." + b64JSON(t, e.claims(did)) + ".", kpd.CodeUnauthorized, ReasonMalformed},
		{"claims not JSON", b64JSON(t, map[string]any{"alg": "ES256K"}) + "." + b64([]byte("hello")) + "." + b64(make([]byte, 64)), kpd.CodeUnauthorized, ReasonMalformed},
		{"claims an array", b64JSON(t, map[string]any{"alg": "ES256K"}) + "." + b64([]byte("[1]")) + "." + b64(make([]byte, 64)), kpd.CodeUnauthorized, ReasonMalformed},
		{"crit header", rawToken(map[string]any{"alg": "ES256K", "crit": []string{"b64"}}, e.claims(did), make([]byte, 64)), kpd.CodeUnauthorized, ReasonMalformed},
		{"too long", strings.Repeat("a", maxTokenLength+1), kpd.CodeUnauthorized, ReasonMalformed},
		{"alg none", rawToken(map[string]any{"alg": "none"}, e.claims(did), nil), kpd.CodeUnauthorized, ReasonAlgorithm},
		{"alg HS256", hs256(), kpd.CodeUnauthorized, ReasonAlgorithm},
		{"alg missing", rawToken(map[string]any{"typ": "JWT"}, e.claims(did), make([]byte, 64)), kpd.CodeUnauthorized, ReasonAlgorithm},
		{"OAuth access token", rawToken(map[string]any{"alg": "ES256K", "typ": "at+jwt"}, e.claims(did), make([]byte, 64)), kpd.CodeUnauthorized, ReasonTokenType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.authenticate(tt.tok)
			wantFail(t, err, tt.code, tt.reason)
		})
	}
	// None of the rejected tokens spent the valid ones' keys or jtis.
	e.wantOK(k.jwt(t, e.claims(did)), did)
}

func TestLxmMatchesEachOperation(t *testing.T) {
	e := newEnv(t, Config{})
	k := newP256Key(t)
	did := e.newPLCDID(k)
	c := e.claims(did)
	c["lxm"] = kpd.OpAckWelcome
	delete(c, "jti")
	tok := k.jwt(t, c)
	if got, err := e.auth.Authenticate(request(kpd.OpAckWelcome, tok)); err != nil || got != did {
		t.Fatalf("ackWelcome: %q, %v", got, err)
	}
	for _, op := range []string{kpd.OpRejectWelcome, ""} {
		_, err := e.auth.Authenticate(request(op, tok))
		wantFail(t, err, kpd.CodeUnauthorized, ReasonWrongLxm)
	}
}

func TestReplayedJTI(t *testing.T) {
	e := newEnv(t, Config{})
	k := newK256Key(t)
	did := e.newPLCDID(k)
	c := e.claims(did)
	tok := k.jwt(t, c)
	e.wantOK(tok, did)
	_, err := e.authenticate(tok)
	wantFail(t, err, kpd.CodeUnauthorized, ReasonReplayed)

	// The same jti from another issuer is another token.
	k2 := newK256Key(t)
	did2 := e.newPLCDID(k2)
	c2 := e.claims(did2)
	c2["jti"] = c["jti"]
	e.wantOK(k2.jwt(t, c2), did2)

	// Once the first token has expired, it fails as expired, and its jti
	// may be used by a new token.
	e.clock.Advance(61 * time.Second)
	_, err = e.authenticate(tok)
	wantFail(t, err, kpd.CodeUnauthorized, ReasonExpired)
	c3 := e.claims(did)
	c3["jti"] = c["jti"]
	e.wantOK(k.jwt(t, c3), did)
}

func TestReplayCacheFull(t *testing.T) {
	e := newEnv(t, Config{ReplayCacheSize: 2, ReplayCachePerDID: 10})
	k := newP256Key(t)
	did := e.newPLCDID(k)
	e.wantOK(k.jwt(t, e.claims(did)), did)
	e.clock.Advance(10 * time.Second)
	e.wantOK(k.jwt(t, e.claims(did)), did)
	_, err := e.authenticate(k.jwt(t, e.claims(did)))
	wantFail(t, err, kpd.CodeUnavailable, ReasonReplayCacheFull)
	// The first token expires 60 s after it was issued, 50 s from now.
	if ke, _ := err.(*kpd.Error); ke.RetryAfter != 50 {
		t.Errorf("RetryAfter = %d, want 50", ke.RetryAfter)
	}
	// Tokens without jti need no room.
	c := e.claims(did)
	delete(c, "jti")
	e.wantOK(k.jwt(t, c), did)

	e.clock.Advance(50 * time.Second)
	e.wantOK(k.jwt(t, e.claims(did)), did)
}

func TestReplayCachePerDID(t *testing.T) {
	e := newEnv(t, Config{ReplayCacheSize: 10, ReplayCachePerDID: 3})
	greedy, other := newP256Key(t), newK256Key(t)
	gDID, oDID := e.newPLCDID(greedy), e.newPLCDID(other)
	for range 3 {
		e.wantOK(greedy.jwt(t, e.claims(gDID)), gDID)
		e.clock.Advance(10 * time.Second)
	}
	_, err := e.authenticate(greedy.jwt(t, e.claims(gDID)))
	wantFail(t, err, kpd.CodeRateLimited, ReasonTooManyTokens)
	// The issuer's first token expires 60 s after it was issued, 30 s from
	// now.
	if ke, _ := err.(*kpd.Error); ke.RetryAfter != 30 {
		t.Errorf("RetryAfter = %d, want 30", ke.RetryAfter)
	}
	// Other issuers are not affected, nor the issuer's tokens without jti.
	e.wantOK(other.jwt(t, e.claims(oDID)), oDID)
	c := e.claims(gDID)
	delete(c, "jti")
	e.wantOK(greedy.jwt(t, c), gDID)

	// When its first token expires, the issuer has room for one more.
	e.clock.Advance(30 * time.Second)
	e.wantOK(greedy.jwt(t, e.claims(gDID)), gDID)
	_, err = e.authenticate(greedy.jwt(t, e.claims(gDID)))
	wantFail(t, err, kpd.CodeRateLimited, ReasonTooManyTokens)
	if ke, _ := err.(*kpd.Error); ke.RetryAfter != 10 {
		t.Errorf("RetryAfter = %d, want 10", ke.RetryAfter)
	}
}

func TestKeyRotation(t *testing.T) {
	e := newEnv(t, Config{})
	old, rotated := newK256Key(t), newP256Key(t)
	did := e.newPLCDID(old)
	e.wantOK(old.jwt(t, e.claims(did)), did)
	if n := e.dir.count(did); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}

	e.dir.set(did, didDocument(did, rotated))
	// Within RefetchInterval of the last fetch a failing signature does not
	// refetch: the new key is not known yet.
	e.clock.Advance(DefaultRefetchInterval / 2)
	_, err := e.authenticate(rotated.jwt(t, e.claims(did)))
	wantFail(t, err, kpd.CodeUnauthorized, ReasonBadSignature)
	if n := e.dir.count(did); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}

	// Later, one failing signature refetches and the new key is accepted.
	e.clock.Advance(DefaultRefetchInterval)
	e.wantOK(rotated.jwt(t, e.claims(did)), did)
	if n := e.dir.count(did); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	e.wantOK(rotated.jwt(t, e.claims(did)), did)

	// The old key is refused, and refusing it refetches nothing: many
	// forged tokens cost the directory nothing.
	for range 5 {
		_, err = e.authenticate(old.jwt(t, e.claims(did)))
		wantFail(t, err, kpd.CodeUnauthorized, ReasonBadSignature)
	}
	if n := e.dir.count(did); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestCacheTTL(t *testing.T) {
	e := newEnv(t, Config{CacheTTL: time.Minute})
	k := newK256Key(t)
	did := e.newPLCDID(k)
	e.wantOK(k.jwt(t, e.claims(did)), did)
	e.clock.Advance(59 * time.Second)
	e.wantOK(k.jwt(t, e.claims(did)), did)
	if n := e.dir.count(did); n != 1 {
		t.Fatalf("%d fetches within the TTL, want 1", n)
	}
	e.clock.Advance(time.Second)
	e.wantOK(k.jwt(t, e.claims(did)), did)
	if n := e.dir.count(did); n != 2 {
		t.Fatalf("%d fetches after the TTL, want 2", n)
	}
}

func TestUnknownDIDIsCachedBriefly(t *testing.T) {
	e := newEnv(t, Config{})
	k := newK256Key(t)
	did := e.newPLCDID(nil)
	for range 3 {
		_, err := e.authenticate(k.jwt(t, e.claims(did)))
		wantFail(t, err, kpd.CodeUnauthorized, ReasonUnknownDID)
	}
	if n := e.dir.count(did); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	// The DID is created; after RefetchInterval it is found.
	e.dir.set(did, didDocument(did, k))
	e.clock.Advance(DefaultRefetchInterval)
	e.wantOK(k.jwt(t, e.claims(did)), did)
}

func TestResolverUnavailable(t *testing.T) {
	t.Run("directory down", func(t *testing.T) {
		e := newEnv(t, Config{})
		k := newK256Key(t)
		did := e.newPLCDID(k)
		e.plc.Close()
		_, err := e.authenticate(k.jwt(t, e.claims(did)))
		wantFail(t, err, kpd.CodeUnavailable, ReasonResolverUnavailable)
		if ke, _ := err.(*kpd.Error); ke.RetryAfter <= 0 {
			t.Errorf("RetryAfter = %d, want > 0", ke.RetryAfter)
		}
	})
	for _, status := range []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			e := newEnv(t, Config{})
			k := newK256Key(t)
			did := e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(status)
			}))
			_, err := e.authenticate(k.jwt(t, e.claims(did)))
			wantFail(t, err, kpd.CodeUnavailable, ReasonResolverUnavailable)
		})
	}
	t.Run("timeout", func(t *testing.T) {
		e := newEnv(t, Config{ResolveTimeout: 100 * time.Millisecond})
		release := make(chan struct{})
		k := newK256Key(t)
		// The handler answers only when the test is over, long after the
		// resolver gave up.
		did := e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
		defer close(release)
		_, err := e.authenticate(k.jwt(t, e.claims(did)))
		wantFail(t, err, kpd.CodeUnavailable, ReasonResolverUnavailable)
	})
	t.Run("recovers", func(t *testing.T) {
		e := newEnv(t, Config{})
		k := newP256Key(t)
		var down atomic.Bool
		down.Store(true)
		var did string
		did = e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if down.Load() {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			w.Write(didDocument(did, k))
		}))
		_, err := e.authenticate(k.jwt(t, e.claims(did)))
		wantFail(t, err, kpd.CodeUnavailable, ReasonResolverUnavailable)
		down.Store(false)
		e.wantOK(k.jwt(t, e.claims(did)), did) // an outage is not cached
	})
}

func TestBadDIDDocuments(t *testing.T) {
	k := newK256Key(t)
	tests := []struct {
		name   string
		doc    func(did string) []byte
		reason string
	}{
		{"not JSON", func(string) []byte { return []byte("<html>") }, ReasonBadDIDDocument},
		{"another DID", func(string) []byte { return didDocument("did:web:evil.example.com", k) }, ReasonBadDIDDocument},
		{"no #atproto key", func(did string) []byte {
			return []byte(strings.ReplaceAll(string(didDocument(did, k)), "#atproto", "#other"))
		}, ReasonBadDIDDocument},
		{"not a Multikey", func(did string) []byte {
			return []byte(strings.ReplaceAll(string(didDocument(did, k)), `"Multikey"`, `"EcdsaSecp256k1VerificationKey2019"`))
		}, ReasonBadDIDDocument},
		{"bad multibase", func(did string) []byte {
			return []byte(strings.ReplaceAll(string(didDocument(did, k)), k.multikey, "m"+k.multikey[1:]))
		}, ReasonBadDIDDocument},
		{"too large", func(did string) []byte {
			return append(didDocument(did, k)[:1], []byte(`"pad":"`+strings.Repeat("x", maxDocumentSize)+`",`+string(didDocument(did, k)[1:]))...)
		}, ReasonBadDIDDocument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			var did string
			did = e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write(tt.doc(did))
			}))
			_, err := e.authenticate(k.jwt(t, e.claims(did)))
			wantFail(t, err, kpd.CodeUnauthorized, tt.reason)
		})
	}
}

func TestDIDWebRedirects(t *testing.T) {
	e := newEnv(t, Config{})
	k := newK256Key(t)
	target := e.newWebDID(k) // a valid document on another host
	targetHost := strings.ReplaceAll(strings.TrimPrefix(target, "did:web:"), "%3A", ":")
	did := e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/did.json":
			http.Redirect(w, r, "https://"+targetHost+"/.well-known/did.json", http.StatusFound)
		}
	}))
	_, err := e.authenticate(k.jwt(t, e.claims(did)))
	wantFail(t, err, kpd.CodeUnauthorized, ReasonUnknownDID)
	if n := e.dir.count(target); n != 0 {
		t.Fatalf("the other host was fetched %d times", n)
	}

	// A redirect on the same host is followed.
	var same string
	same = e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/did.json":
			http.Redirect(w, r, "/moved.json", http.StatusMovedPermanently)
		case "/moved.json":
			w.Write(didDocument(same, k))
		}
	}))
	e.wantOK(k.jwt(t, e.claims(same)), same)
}

func TestDefaultClientRefusesLoopbackDIDWeb(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
	}))
	defer srv.Close()
	clock := testkit.NewClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))
	a, err := New(Config{ServiceDID: serviceDID, Clock: clock.Now}) // kpd's own HTTP clients
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(srv.URL)
	did := "did:web:" + strings.ReplaceAll(u.Host, ":", "%3A")
	k := newK256Key(t)
	e := &env{t: t, clock: clock}
	_, err = a.Authenticate(request(kpd.OpClaimKeyPackages, k.jwt(t, e.claims(did))))
	wantFail(t, err, kpd.CodeUnauthorized, ReasonUnknownDID)
	if hits.Load() != 0 {
		t.Fatalf("the loopback server was reached")
	}
}

func TestConcurrentFirstLookupsShareOneFetch(t *testing.T) {
	e := newEnv(t, Config{})
	e.dir.delay = 50 * time.Millisecond
	k := newK256Key(t)
	did := e.newPLCDID(k)
	toks := make([]string, 16)
	for i := range toks {
		toks[i] = k.jwt(t, e.claims(did))
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(toks))
	for _, tok := range toks {
		wg.Go(func() {
			if got, err := e.authenticate(tok); err != nil || got != did {
				errs <- fmt.Errorf("Authenticate = %q, %v", got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.dir.count(did); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

func TestWaiterGivesUpButFetchCompletes(t *testing.T) {
	e := newEnv(t, Config{})
	e.dir.delay = 100 * time.Millisecond
	k := newK256Key(t)
	did := e.newPLCDID(k)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	r := request(kpd.OpClaimKeyPackages, k.jwt(t, e.claims(did))).WithContext(
		kpd.WithOperation(ctx, kpd.OpClaimKeyPackages))
	_, err := e.auth.Authenticate(r)
	wantFail(t, err, kpd.CodeUnavailable, ReasonResolverUnavailable)
	// The fetch went on; the next request finds the key without another.
	e.wantOK(k.jwt(t, e.claims(did)), did)
	if n := e.dir.count(did); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

func TestCacheSizeBounded(t *testing.T) {
	e := newEnv(t, Config{CacheSize: 8})
	k := newK256Key(t)
	for range 50 {
		did := e.newPLCDID(k)
		e.wantOK(k.jwt(t, e.claims(did)), did)
	}
	e.auth.keys.mu.Lock()
	n := len(e.auth.keys.entries)
	e.auth.keys.mu.Unlock()
	if n > 8 {
		t.Fatalf("%d cached DIDs, want at most 8", n)
	}
}

// fetches returns the number of documents e's directory served.
func (e *env) fetches() int {
	e.dir.mu.Lock()
	defer e.dir.mu.Unlock()
	n := 0
	for _, c := range e.dir.fetches {
		n += c
	}
	return n
}

// countingTransport answers every request with 404 and counts them.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return &http.Response{StatusCode: http.StatusNotFound, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
}

// Hostnames are case-insensitive: a did:web spelled otherwise than in
// lower case would be another DID, with its own cache entry, for the same
// host, so forged tokens could make kpd fetch one host's document without
// end.
func TestDIDWebMustBeLowerCase(t *testing.T) {
	ct := &countingTransport{}
	e := newEnv(t, Config{HTTPClient: &http.Client{Transport: ct}})
	k := newP256Key(t)
	for _, did := range []string{
		"did:web:Victim.example.com",
		"did:web:VICTIM.EXAMPLE.COM",
		"did:web:victim.example.coM",
		"did:web:victim.example.com%3a8443",
	} {
		_, err := e.authenticate(k.jwt(t, e.claims(did)))
		wantFail(t, err, kpd.CodeUnauthorized, ReasonUnknownDID)
	}
	if n := ct.n.Load(); n != 0 {
		t.Fatalf("%d fetches, want 0", n)
	}
	// The canonical spelling is fetched.
	_, err := e.authenticate(k.jwt(t, e.claims("did:web:victim.example.com%3A8443")))
	wantFail(t, err, kpd.CodeUnauthorized, ReasonUnknownDID)
	if n := ct.n.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
}

// A token needs no valid signature to make kpd resolve its iss, so the
// fetches of all DIDs together are budgeted.
func TestFetchBudget(t *testing.T) {
	e := newEnv(t, Config{ResolveRate: 1, ResolveBurst: 5})
	k := newK256Key(t)
	did := e.newPLCDID(k)
	e.wantOK(k.jwt(t, e.claims(did)), did)
	forged := func() error {
		_, err := e.authenticate(k.jwt(t, e.claims(e.newPLCDID(nil))))
		return err
	}
	for range 4 {
		wantFail(t, forged(), kpd.CodeUnauthorized, ReasonUnknownDID)
	}
	for range 10 {
		err := forged()
		wantFail(t, err, kpd.CodeUnavailable, ReasonResolverBusy)
		if ke, _ := err.(*kpd.Error); ke.RetryAfter != 1 {
			t.Fatalf("RetryAfter = %d, want 1", ke.RetryAfter)
		}
	}
	if n := e.fetches(); n != 5 {
		t.Fatalf("%d fetches, want 5", n)
	}
	// A cached key needs no fetch.
	e.wantOK(k.jwt(t, e.claims(did)), did)

	// The budget refills at 1 fetch a second.
	e.clock.Advance(time.Second)
	wantFail(t, forged(), kpd.CodeUnauthorized, ReasonUnknownDID)
	wantFail(t, forged(), kpd.CodeUnavailable, ReasonResolverBusy)
	if n := e.fetches(); n != 6 {
		t.Fatalf("%d fetches, want 6", n)
	}
}

// cached reports whether did has an entry in e's key cache.
func (e *env) cached(did string) bool {
	e.auth.keys.mu.Lock()
	defer e.auth.keys.mu.Unlock()
	_, ok := e.auth.keys.entries[did]
	return ok
}

// Made-up DIDs, which anyone can send by the thousand, must not push the
// keys of real callers out of a full cache.
func TestCacheEvictsFailuresFirst(t *testing.T) {
	e := newEnv(t, Config{CacheSize: 16})
	k := newP256Key(t)
	var live []string
	for range 4 {
		did := e.newPLCDID(k)
		e.wantOK(k.jwt(t, e.claims(did)), did)
		live = append(live, did)
	}
	for range 100 {
		e.clock.Advance(10 * time.Millisecond) // the failures are more recent
		_, err := e.authenticate(k.jwt(t, e.claims(e.newPLCDID(nil))))
		wantFail(t, err, kpd.CodeUnauthorized, ReasonUnknownDID)
	}
	for _, did := range live {
		if !e.cached(did) {
			t.Errorf("the key of %s was evicted", did)
		}
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	e := newEnv(t, Config{CacheSize: 8})
	k := newK256Key(t)
	hot := e.newPLCDID(k)
	e.wantOK(k.jwt(t, e.claims(hot)), hot)
	var cold []string
	for range 100 {
		e.clock.Advance(time.Millisecond)
		did := e.newPLCDID(k)
		e.wantOK(k.jwt(t, e.claims(did)), did)
		cold = append(cold, did)
		e.clock.Advance(time.Millisecond)
		e.wantOK(k.jwt(t, e.claims(hot)), hot)
	}
	if n := e.dir.count(hot); n != 1 {
		t.Errorf("the key used by every other request was fetched %d times, want 1", n)
	}
	if e.cached(cold[0]) {
		t.Errorf("the least recently used key is still cached")
	}
	if !e.cached(cold[len(cold)-1]) {
		t.Errorf("the most recently fetched key was evicted")
	}
}

// The caller is not authenticated yet: what kpd learnt contacting the
// DID's host (addresses, dial errors, certificates, answers) must not
// reach it, or kpd is a port scanner for anyone. The log has it.
func TestResolutionFailuresRevealNothing(t *testing.T) {
	closed := httptest.NewTLSServer(http.NotFoundHandler())
	closedAddr := closed.Listener.Addr().String()
	closed.Close()
	tests := []struct {
		name string
		// did returns the DID to authenticate as.
		did func(e *env) string
		// defaultClient uses kpd's own HTTP clients instead of e.client.
		defaultClient bool
		code          kpd.Code
		reason        string
		message       string
		// logged is part of the cause that the log must show.
		logged string
	}{
		{"connection refused", func(*env) string { return "did:web:" + strings.ReplaceAll(closedAddr, ":", "%3A") }, false,
			kpd.CodeUnavailable, ReasonResolverUnavailable, msgResolverUnavailable, "connection refused"},
		{"non-public address", func(e *env) string {
			return e.newWebHost(http.NotFoundHandler())
		}, true, kpd.CodeUnauthorized, ReasonUnknownDID, msgUnknownDID, "127.0.0.1"},
		{"HTTP 404", func(e *env) string { return e.newWebHost(http.NotFoundHandler()) }, false,
			kpd.CodeUnauthorized, ReasonUnknownDID, msgUnknownDID, "HTTP 404"},
		{"HTTP 502", func(e *env) string {
			return e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
		}, false, kpd.CodeUnavailable, ReasonResolverUnavailable, msgResolverUnavailable, "HTTP 502"},
		{"not JSON", func(e *env) string {
			return e.newWebHost(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("SSH-2.0-OpenSSH_9.6")) }))
		}, false, kpd.CodeUnauthorized, ReasonBadDIDDocument, msgBadDIDDocument, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log testkit.SyncBuffer
			e := newEnv(t, Config{Logger: zerolog.New(&log).Level(zerolog.DebugLevel)})
			a := e.auth
			if tt.defaultClient {
				var err error
				a, err = New(Config{ServiceDID: serviceDID, Clock: e.clock.Now, Logger: zerolog.New(&log).Level(zerolog.DebugLevel)})
				if err != nil {
					t.Fatal(err)
				}
			}
			k := newP256Key(t)
			did := tt.did(e)
			tok := k.jwt(t, e.claims(did))
			_, err := a.Authenticate(request(kpd.OpClaimKeyPackages, tok))
			wantFail(t, err, tt.code, tt.reason)
			if got, want := kpd.ErrorMessage(err), tt.reason+": "+tt.message; got != want {
				t.Errorf("message %q, want %q", got, want)
			}
			logged := log.String()
			if !strings.Contains(logged, tt.logged) || !strings.Contains(logged, did) {
				t.Errorf("the log %q does not have the DID and %q", logged, tt.logged)
			}
			if sig := tok[strings.LastIndexByte(tok, '.')+1:]; strings.Contains(logged, sig) {
				t.Errorf("the log has the token")
			}
		})
	}
}

func TestNewValidatesConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{ServiceDID: "kpd"},
		{ServiceDID: serviceDID, PLCURL: "ftp://plc.example.com"},
		{ServiceDID: serviceDID, PLCURL: "plc.directory"},
		{ServiceDID: serviceDID, MaxTokenAge: -time.Second},
		{ServiceDID: serviceDID, ReplayCacheSize: -1},
		{ServiceDID: serviceDID, ReplayCachePerDID: -1},
		{ServiceDID: serviceDID, ResolveRate: -1},
		{ServiceDID: serviceDID, ResolveRate: math.NaN()},
		{ServiceDID: serviceDID, ResolveRate: math.Inf(1)},
		{ServiceDID: serviceDID, ResolveBurst: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	a, err := New(Config{ServiceDID: serviceDID + "#kpd", PLCURL: "https://plc.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.PLCURL != "https://plc.example.com" || a.cfg.MaxTokenAge != DefaultMaxTokenAge ||
		a.cfg.ReplayCacheSize != DefaultReplayCacheSize || a.cfg.ReplayCachePerDID != DefaultReplayCacheSize/100 ||
		a.cfg.ResolveRate != DefaultResolveRate || a.cfg.ResolveBurst != DefaultResolveBurst {
		t.Fatalf("defaults not applied: %+v", a.cfg)
	}
}

func TestReasonOf(t *testing.T) {
	if r := ReasonOf(nil); r != "" {
		t.Errorf("ReasonOf(nil) = %q", r)
	}
	if r := ReasonOf(kpd.Errorf(kpd.CodeUnauthorized, "Nonsense: x")); r != "" {
		t.Errorf("unknown reason: %q", r)
	}
	if r := ReasonOf(fmt.Errorf("wrapped: %w", unauthorized(ReasonExpired, "x"))); r != ReasonExpired {
		t.Errorf("wrapped: %q", r)
	}
}
