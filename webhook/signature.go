package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries a request's signature: `t=<unix seconds>,v1=<hex
// HMAC-SHA256(secret, t + "." + body)>`.
const SignatureHeader = "Kpd-Signature"

// DefaultTolerance is the Verify tolerance used when none is given: how far
// a signature's timestamp may be from the receiver's clock.
const DefaultTolerance = 5 * time.Minute

// Errors of Verify. A receiver should answer any of them with a 4xx status
// and drop the request.
var (
	// ErrBadHeader: the header is missing or not of the form t=…,v1=….
	ErrBadHeader = errors.New("webhook: malformed Kpd-Signature header")
	// ErrTimestamp: the signature's timestamp is further from now than the
	// tolerance (a replay, or a badly wrong clock).
	ErrTimestamp = errors.New("webhook: signature timestamp outside the tolerance")
	// ErrMismatch: no v1 signature matches the body and secret.
	ErrMismatch = errors.New("webhook: signature does not match")
)

// Sign returns the Kpd-Signature header value of body sent at t:
// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<unix>." + body)>`.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

// Verify checks a Kpd-Signature header against the raw request body, as a
// webhook receiver must before trusting an event. The header's timestamp
// must be within tolerance of now (tolerance <= 0 means DefaultTolerance),
// which bounds replays; any one of its v1 signatures must match (a sender
// rotating its secret may send several). It returns nil, ErrBadHeader,
// ErrTimestamp or ErrMismatch.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrBadHeader
		}
		switch k {
		case "t":
			if ts != "" {
				return ErrBadHeader
			}
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != sha256.Size {
				return ErrBadHeader
			}
			sigs = append(sigs, sig)
		}
		// Other schemes are ignored, so that senders can add them.
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrBadHeader
	}
	if d := now.Sub(time.Unix(unix, 0)); d > tolerance || d < -tolerance {
		return ErrTimestamp
	}
	want := mac(secret, ts, body)
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			return nil
		}
	}
	return ErrMismatch
}

// mac is HMAC-SHA256(secret, ts + "." + body).
func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}
