package webhook_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/webhook"
)

// The known answer was computed with
// printf '%s' '1700000000.{"id":"e1"}' | openssl dgst -sha256 -hmac topsecret
const knownSignature = "t=1700000000,v1=ef9c6055c0f6e0d9d3757f65d7309541bd7a5dc2b0bf440fa407408459f1545b"

var (
	secret   = []byte("topsecret")
	signedAt = time.Unix(1700000000, 0)
	body     = []byte(`{"id":"e1"}`)
)

func TestSignKnownAnswer(t *testing.T) {
	if got := webhook.Sign(secret, signedAt, body); got != knownSignature {
		t.Fatalf("Sign = %s, want %s", got, knownSignature)
	}
}

func TestVerify(t *testing.T) {
	other := webhook.Sign([]byte("old secret"), signedAt, body)
	for _, tc := range []struct {
		name      string
		secret    []byte
		header    string
		body      []byte
		now       time.Time
		tolerance time.Duration
		want      error
	}{
		{"valid", secret, knownSignature, body, signedAt, 0, nil},
		{"valid within tolerance", secret, knownSignature, body, signedAt.Add(4 * time.Minute), 0, nil},
		{"valid with spaces and extra schemes", secret, " t=1700000000 , v0=zz , v1=" + knownSignature[16:], body, signedAt, 0, nil},
		{"one of several v1 matches", secret, other + ",v1=" + knownSignature[16:], body, signedAt, 0, nil},
		{"future within custom tolerance", secret, knownSignature, body, signedAt.Add(-50 * time.Second), time.Minute, nil},
		{"tampered body", secret, knownSignature, []byte(`{"id":"e2"}`), signedAt, 0, webhook.ErrMismatch},
		{"wrong secret", []byte("nope"), knownSignature, body, signedAt, 0, webhook.ErrMismatch},
		{"only another secret's signature", secret, other, body, signedAt, 0, webhook.ErrMismatch},
		{"too old", secret, knownSignature, body, signedAt.Add(6 * time.Minute), 0, webhook.ErrTimestamp},
		{"too far in the future", secret, knownSignature, body, signedAt.Add(-2 * time.Minute), time.Minute, webhook.ErrTimestamp},
		{"empty", secret, "", body, signedAt, 0, webhook.ErrBadHeader},
		{"no v1", secret, "t=1700000000", body, signedAt, 0, webhook.ErrBadHeader},
		{"no t", secret, knownSignature[13:], body, signedAt, 0, webhook.ErrBadHeader},
		{"two t", secret, "t=1700000000," + knownSignature, body, signedAt, 0, webhook.ErrBadHeader},
		{"t not a number", secret, "t=soon,v1=" + knownSignature[16:], body, signedAt, 0, webhook.ErrBadHeader},
		{"v1 not hex", secret, "t=1700000000,v1=xyz", body, signedAt, 0, webhook.ErrBadHeader},
		{"v1 too short", secret, "t=1700000000,v1=abcd", body, signedAt, 0, webhook.ErrBadHeader},
		{"part without =", secret, knownSignature + ",junk", body, signedAt, 0, webhook.ErrBadHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := webhook.Verify(tc.secret, tc.header, tc.body, tc.now, tc.tolerance)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for i := range 20 {
		b := []byte(fmt.Sprintf(`{"seq":%d}`, i))
		h := webhook.Sign(secret, now, b)
		if err := webhook.Verify(secret, h, b, now.Add(time.Second), time.Minute); err != nil {
			t.Fatalf("Verify(Sign(%s)) = %v", b, err)
		}
	}
}

func TestFullJitter(t *testing.T) {
	base, limit := 100*time.Millisecond, 2*time.Second
	backoff := webhook.FullJitter(base, limit)
	for n, ceiling := range map[int]time.Duration{
		1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond,
		5: 1600 * time.Millisecond, 6: limit, 100: limit, 10_000: limit,
	} {
		distinct := map[time.Duration]bool{}
		for range 200 {
			d := backoff(n)
			if d < 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want within [0, %v]", n, d, ceiling)
			}
			distinct[d] = true
		}
		if len(distinct) < 10 {
			t.Errorf("backoff(%d) gave %d distinct values in 200 draws: not jittered", n, len(distinct))
		}
	}
}

func BenchmarkSign(b *testing.B) {
	body := make([]byte, 400) // about one event
	for range b.N {
		webhook.Sign(secret, signedAt, body)
	}
}
