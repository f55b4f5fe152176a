package kpd_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kpd-dir/kpd"
)

func TestValidDID(t *testing.T) {
	for _, s := range []string{
		"did:plc:ewvi7nxzyoun6zhxrhs64oiz",
		"did:web:example.com",
		"did:web:localhost%3A8080",
		"did:key:z6Mk-_.",
		"did:" + strings.Repeat("a", 10) + ":" + strings.Repeat("b", kpd.MaxDIDLength-15),
	} {
		if !kpd.ValidDID(s) {
			t.Errorf("ValidDID(%q) = false", s)
		}
	}
	for _, s := range []string{
		"", "did:", "did:plc", "did::x", "did:PLC:x", "did:plc:", "did:plc:x:",
		"plc:x", "did:plc:a b", "did:plc:a#frag", "did:plc:a/b",
		"did:a:" + strings.Repeat("b", kpd.MaxDIDLength),
	} {
		if kpd.ValidDID(s) {
			t.Errorf("ValidDID(%q) = true", s)
		}
	}
}

func TestValidDevice(t *testing.T) {
	for _, s := range []string{"a", "phone", "dev-1.2_x~", "...", ".a", "a.", "~", strings.Repeat("z", kpd.MaxDeviceLength)} {
		if !kpd.ValidDevice(s) {
			t.Errorf("ValidDevice(%q) = false", s)
		}
	}
	for _, s := range []string{"", "a/b", "a b", "ä", ".", "..", strings.Repeat("z", kpd.MaxDeviceLength+1)} {
		if kpd.ValidDevice(s) {
			t.Errorf("ValidDevice(%q) = true", s)
		}
	}
}

func TestValidConvoID(t *testing.T) {
	if !kpd.ValidConvoID("team chat #1 ~") || !kpd.ValidConvoID(strings.Repeat("x", kpd.MaxConvoIDLength)) {
		t.Error("printable ASCII convo ids refused")
	}
	for _, s := range []string{"", "tab\there", "é", strings.Repeat("x", kpd.MaxConvoIDLength+1)} {
		if kpd.ValidConvoID(s) {
			t.Errorf("ValidConvoID(%q) = true", s)
		}
	}
}

func TestWelcomeIDIsStableAndDistinct(t *testing.T) {
	a, b := kpd.WelcomeID([]byte("welcome a")), kpd.WelcomeID([]byte("welcome b"))
	if a != kpd.WelcomeID([]byte("welcome a")) || a == b || len(a) != 32 {
		t.Errorf("WelcomeID: %q, %q", a, b)
	}
}

// codedError is an error from another package that carries a code.
type codedError struct{}

func (codedError) Error() string     { return "bad signature at offset 7" }
func (codedError) ErrorCode() string { return "BadSignature" }

func TestErrorCodeAndMessage(t *testing.T) {
	for _, c := range []struct {
		err  error
		code kpd.Code
		msg  string
	}{
		{nil, "", ""},
		{kpd.Errorf(kpd.CodeNotFound, "no device %q", "x"), kpd.CodeNotFound, `no device "x"`},
		{fmt.Errorf("wrapped: %w", kpd.Errorf(kpd.CodeConflict, "taken")), kpd.CodeConflict, "taken"},
		{codedError{}, kpd.CodeBadSignature, "bad signature at offset 7"},
		{errors.New("disk on fire"), kpd.CodeInternal, "internal error"},
	} {
		if got := kpd.ErrorCode(c.err); got != c.code {
			t.Errorf("ErrorCode(%v) = %q, want %q", c.err, got, c.code)
		}
		if got := kpd.ErrorMessage(c.err); got != c.msg {
			t.Errorf("ErrorMessage(%v) = %q, want %q", c.err, got, c.msg)
		}
	}
}

func TestRefBytes(t *testing.T) {
	r := kpd.RefOf([]byte{0xab, 0x01})
	if r != "ab01" {
		t.Fatalf("RefOf = %q", r)
	}
	if b, err := r.Bytes(); err != nil || len(b) != 2 {
		t.Errorf("Bytes = %x, %v", b, err)
	}
	if _, err := kpd.Ref("zz").Bytes(); err == nil {
		t.Error("Bytes of non-hex succeeded")
	}
}
