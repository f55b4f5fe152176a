package atproto

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/kpd-dir/kpd"
)

// maxTokenLength bounds the accepted JWT; service-auth tokens are well
// under 1 KiB.
const maxTokenLength = 8 << 10

// maxNumericDate bounds exp and iat (seconds since 1970, year ~36812), so
// that converting them to a time cannot overflow.
const maxNumericDate = 1 << 40

// token is a parsed, not yet verified, service-auth JWT.
type token struct {
	// signingInput is the JWS signing input: header "." payload.
	signingInput string
	signature    []byte
	curve        *curve
	claims       claims
	// did is iss without its #fragment.
	did string
	exp time.Time
	iat *time.Time
}

// claims are the JWT claims kpd reads; others are ignored.
type claims struct {
	Iss string   `json:"iss"`
	Aud string   `json:"aud"`
	Exp *float64 `json:"exp"`
	Iat *float64 `json:"iat"`
	Lxm *string  `json:"lxm"`
	Jti *string  `json:"jti"`
}

// header is the JOSE header of a token.
type header struct {
	Alg  string          `json:"alg"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit"`
}

// rejectedTypes are typ values of OAuth tokens, which must not pass as
// service-auth tokens.
var rejectedTypes = map[string]bool{"at+jwt": true, "refresh+jwt": true, "dpop+jwt": true}

// bearerToken returns the credential of an `Authorization: Bearer <JWT>`
// header (the scheme is case-insensitive).
func bearerToken(r *http.Request) (string, error) {
	h := r.Header.Get("Authorization")
	scheme, cred, ok := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	if !ok || !strings.EqualFold(scheme, "Bearer") || cred == "" {
		return "", unauthorized(ReasonMissingToken, "expected 'Authorization: Bearer <service-auth JWT>'")
	}
	return cred, nil
}

// parseToken parses a compact JWS and its claims, checks the algorithm,
// the token type and the presence and syntax of iss, aud and exp. It does
// not check the signature or the claims' values.
func parseToken(raw string) (*token, error) {
	if len(raw) > maxTokenLength {
		return nil, unauthorized(ReasonMalformed, "the token is longer than %d bytes", maxTokenLength)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, unauthorized(ReasonMalformed, "the token is not a compact JWS (three base64url parts)")
	}
	var h header
	if err := decodeJSONPart(parts[0], &h); err != nil {
		return nil, unauthorized(ReasonMalformed, "JWS header: %v", err)
	}
	c := curves[h.Alg]
	if c == nil {
		return nil, unauthorized(ReasonAlgorithm, "alg %q is not accepted (ES256 or ES256K only)", clip(h.Alg))
	}
	if rejectedTypes[strings.ToLower(h.Typ)] {
		return nil, unauthorized(ReasonTokenType, "typ %q is not a service-auth token", clip(h.Typ))
	}
	if h.Crit != nil {
		return nil, unauthorized(ReasonMalformed, "JWS header: crit extensions are not supported")
	}
	t := &token{signingInput: parts[0] + "." + parts[1], curve: c}
	if err := decodeJSONPart(parts[1], &t.claims); err != nil {
		return nil, unauthorized(ReasonMalformed, "JWT claims: %v", err)
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return nil, unauthorized(ReasonMalformed, "JWS signature is not base64url")
	}
	t.signature = sig
	return t, t.checkRequired()
}

// checkRequired checks that iss, aud and exp are present and valid and
// fills did, exp and iat.
func (t *token) checkRequired() error {
	c := &t.claims
	did, _, _ := strings.Cut(c.Iss, "#")
	if !kpd.ValidDID(did) {
		return unauthorized(ReasonMalformed, "iss %q is not a DID", clip(c.Iss))
	}
	t.did = did
	if c.Aud == "" {
		return unauthorized(ReasonMalformed, "aud is missing")
	}
	if c.Exp == nil {
		return unauthorized(ReasonMalformed, "exp is missing")
	}
	exp, ok := numericDate(*c.Exp)
	if !ok {
		return unauthorized(ReasonMalformed, "exp is out of range")
	}
	t.exp = exp
	if c.Iat != nil {
		iat, ok := numericDate(*c.Iat)
		if !ok {
			return unauthorized(ReasonMalformed, "iat is out of range")
		}
		t.iat = &iat
	}
	return nil
}

// decodeJSONPart decodes one base64url part of a JWS holding a JSON object.
func decodeJSONPart(part string, v any) error {
	b, err := base64.RawURLEncoding.Strict().DecodeString(part)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		return errNotObject
	}
	return json.Unmarshal(b, v)
}

var errNotObject = errors.New("not a JSON object")

// numericDate converts a JWT NumericDate (seconds since 1970, possibly
// fractional) to a time; ok is false when it is negative or absurdly large.
func numericDate(f float64) (t time.Time, ok bool) {
	if !(f >= 0 && f < maxNumericDate) {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}
