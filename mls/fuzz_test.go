package mls

import (
	"bytes"
	"crypto"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
)

var knownCodes = []Code{CodeMalformed, CodeUnsupportedVersion, CodeUnsupportedCipherSuite,
	CodeInvalidKeyPackage, CodeBadSignature, CodeLifetimeInvalid, CodeIdentityMismatch}

// checkError fails unless err is an *Error with a known code and an offset
// inside the input (or -1).
func checkError(t *testing.T, err error, inputLen int) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is %T, not *Error", err, err)
	}
	if !slices.Contains(knownCodes, e.Code) || e.Offset < -1 || e.Offset > inputLen || e.Error() == "" {
		t.Fatalf("error %#v: unknown code or offset outside the input", e)
	}
}

// rawOf checks that raw is b itself or b without a 4-byte MLSMessage header.
func rawOf(t *testing.T, b, raw []byte) {
	t.Helper()
	if !bytes.Equal(raw, b) && !(len(b) >= 4 && bytes.Equal(raw, b[4:])) {
		t.Fatalf("Raw (%d bytes) is neither the input (%d bytes) nor the input without a header", len(raw), len(b))
	}
}

func FuzzParseKeyPackage(f *testing.F) {
	fx := testkit.Fixtures(f)
	for _, s := range fx.Suites {
		for _, k := range s.KeyPackages {
			f.Add(k.Bare)
			f.Add(k.Message)
		}
		f.Add(s.Invalid.BadSignature)
		f.Add(s.Invalid.Truncated)
	}
	f.Add([]byte{0, 1, 0, 1, 0xbf, 0xff, 0xff, 0xff, 0, 0})
	reg := FixtureRegistry(f, fx)
	sha256Suite := Suite{Hash: crypto.SHA256}
	policy := Policy{Now: time.Unix(1795740124, 0), SkipIdentityCheck: true, AllowX509: true}

	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := reg.ValidateKeyPackage(b, "", policy); err != nil {
			checkError(t, err, len(b))
		} else if !bytes.Equal(v.Ref, v.KeyPackage.Ref(v.Suite)) {
			t.Fatal("Validated.Ref is not the KeyPackage's ref")
		}

		kp, err := ParseKeyPackage(b)
		if err != nil {
			checkError(t, err, len(b))
			return
		}
		rawOf(t, b, kp.Raw)
		again, err := ParseKeyPackage(kp.Raw)
		if err != nil {
			t.Fatalf("Raw does not parse again: %v", err)
		}
		if !bytes.Equal(again.Raw, kp.Raw) || !bytes.Equal(again.Ref(sha256Suite), kp.Ref(sha256Suite)) {
			t.Fatal("the ref of the re-parsed Raw differs")
		}
		if s, ok := reg.Lookup(kp.CipherSuite); ok {
			if err := kp.VerifySignatures(s); err != nil {
				checkError(t, err, len(b))
			}
		}
	})
}

func FuzzParseWelcome(f *testing.F) {
	fx := testkit.Fixtures(f)
	for _, s := range fx.Suites {
		f.Add(s.Welcome.Message)
		f.Add(s.Welcome.Message[4:])
	}
	f.Add([]byte{0, 1, 0xbf, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	reg := FixtureRegistry(f, fx)

	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, err := reg.ValidateWelcome(b); err != nil {
			checkError(t, err, len(b))
		}
		w, err := ParseWelcome(b)
		if err != nil {
			checkError(t, err, len(b))
			return
		}
		rawOf(t, b, w.Raw)
		again, err := ParseWelcome(w.Raw)
		if err != nil {
			t.Fatalf("Raw does not parse again: %v", err)
		}
		if !bytes.Equal(again.Raw, w.Raw) || len(w.NewMembers()) == 0 ||
			!slices.EqualFunc(again.NewMembers(), w.NewMembers(), bytes.Equal) {
			t.Fatal("the re-parsed Raw names other new members")
		}
	})
}
