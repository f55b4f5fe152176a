package mls_test

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/mls"
)

// replaceAt returns b with n bytes at off replaced by with.
func replaceAt(b []byte, off, n int, with ...byte) []byte {
	return slices.Concat(b[:off], with, b[off+n:])
}

// TestMalformedLengths rewrites the 1-byte length of init_key (32, at byte 4
// of a bare KeyPackage) in invalid ways.
func TestMalformedLengths(t *testing.T) {
	f := testkit.Fixtures(t)
	k := f.Suites[0].KeyPackages["alice_dev1"]
	if k.Bare[4] != 0x20 || !bytes.Equal(k.Message[4:], k.Bare) {
		t.Fatalf("unexpected fixture layout")
	}
	for _, tc := range []struct {
		name   string
		prefix []byte
		msg    string
	}{
		{"2-byte non-minimal", []byte{0x40, 0x20}, "non-minimal"},
		{"4-byte non-minimal", []byte{0x80, 0x00, 0x00, 0x20}, "non-minimal"},
		{"prefix 11", []byte{0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20}, "0b11"},
		{"longer than the input", []byte{0x80, 0x10, 0x00, 0x00}, "exceeds"},
	} {
		for form, off := range map[string]int{"bare": 0, "framed": 4} {
			t.Run(tc.name+"/"+form, func(t *testing.T) {
				b := k.Message[4-off:]
				_, err := mls.ParseKeyPackage(replaceAt(b, off+4, 1, tc.prefix...))
				e := wantCode(t, err, mls.CodeMalformed)
				if e.Field != "key_package.init_key" || e.Offset != off+4 || !strings.Contains(e.Msg, tc.msg) {
					t.Errorf("error %v, want one for key_package.init_key at byte %d saying %q", e, off+4, tc.msg)
				}
			})
		}
	}
}

// TestHugeLengthSmallInput checks that a 1 GiB length prefix in a 10-byte
// input (12 for the framed KeyPackage) is rejected without a large
// allocation.
func TestHugeLengthSmallInput(t *testing.T) {
	gib := []byte{0xbf, 0xff, 0xff, 0xff} // 2^30-1
	for name, tc := range map[string]struct {
		in    []byte
		parse func([]byte) error
	}{
		"bare key package":   {slices.Concat([]byte{0, 1, 0, 1}, gib, []byte{0, 0}), parseKP},
		"framed key package": {slices.Concat([]byte{0, 1, 0, 5, 0, 1, 0, 1}, gib), parseKP},
		"bare welcome":       {slices.Concat([]byte{0, 1}, gib, []byte{0, 0, 0, 0}), parseWelcome},
		"framed welcome":     {slices.Concat([]byte{0, 1, 0, 3, 0, 1}, gib), parseWelcome},
	} {
		t.Run(name, func(t *testing.T) {
			if len(tc.in) > 12 {
				t.Fatalf("input is %d bytes", len(tc.in))
			}
			e := wantCode(t, tc.parse(tc.in), mls.CodeMalformed)
			if !strings.Contains(e.Msg, "declared length 1073741823 exceeds") {
				t.Errorf("message %q", e.Msg)
			}
			const runs = 200
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			allocs := testing.AllocsPerRun(runs, func() { _ = tc.parse(tc.in) })
			runtime.ReadMemStats(&after)
			perRun := (after.TotalAlloc - before.TotalAlloc) / (runs + 1)
			if allocs > 12 || perRun > 4096 {
				t.Errorf("a 10-byte input allocates %.0f times, %d bytes per parse", allocs, perRun)
			}
		})
	}
}

func parseKP(b []byte) error {
	_, err := mls.ParseKeyPackage(b)
	return err
}

func parseWelcome(b []byte) error {
	_, err := mls.ParseWelcome(b)
	return err
}

func TestWrongWireFormat(t *testing.T) {
	f := testkit.Fixtures(t)
	fs := f.Suites[0]
	kp := fs.KeyPackages["alice_dev1"].Message
	welcome := fs.Welcome.Message
	wantWireFormat := func(err error) {
		t.Helper()
		if e := wantCode(t, err, mls.CodeMalformed); e.Field != "mls_message.wire_format" || e.Offset != 2 {
			t.Errorf("error %v, want one for mls_message.wire_format", e)
		}
	}
	for _, wire := range []byte{0, 1, 2, 3, 4, 6, 0xff} {
		_, err := mls.ParseKeyPackage(replaceAt(kp, 3, 1, wire))
		wantWireFormat(err)
	}
	for _, wire := range []byte{0, 1, 2, 4, 5, 6, 0xff} {
		_, err := mls.ParseWelcome(replaceAt(welcome, 3, 1, wire))
		wantWireFormat(err)
	}
	_, err := mls.ParseKeyPackage(welcome)
	wantWireFormat(err)
	_, err = mls.ParseWelcome(kp)
	wantWireFormat(err)
	_, err = mls.ParseKeyPackage(nil)
	wantCode(t, err, mls.CodeMalformed)
	_, err = mls.ParseWelcome(nil)
	wantCode(t, err, mls.CodeMalformed)
}

// TestWelcomeWithoutMembers checks that a Welcome must name a new member.
func TestWelcomeWithoutMembers(t *testing.T) {
	// Suite 1, no secrets, 3 bytes of group info, framed.
	_, err := mls.ParseWelcome([]byte{0, 1, 0, 3, 0, 1, 0, 0x03, 1, 2, 3})
	if e := wantCode(t, err, mls.CodeMalformed); e.Field != "welcome.secrets" || e.Offset != 6 {
		t.Errorf("error %v, want one for welcome.secrets at byte 6", e)
	}
	// The same, bare: as its third byte is 0 it is taken for an MLSMessage.
	_, err = mls.ParseWelcome([]byte{0, 1, 0, 0x03, 1, 2, 3})
	wantCode(t, err, mls.CodeMalformed)
}

// TestWelcomeRefSizes checks that new_member must be a hash's size.
func TestWelcomeRefSizes(t *testing.T) {
	// welcome frames one secret naming a ref of n bytes; it also returns
	// where the ref starts.
	welcome := func(n int) ([]byte, int) {
		secret := mls.AppendOpaque(nil, bytes.Repeat([]byte{0xaa}, n))
		secret = mls.AppendOpaque(secret, []byte{1})
		secret = mls.AppendOpaque(secret, []byte{2})
		b := mls.AppendOpaque([]byte{0, 1, 0, 3, 0, 1}, secret)
		return mls.AppendOpaque(b, []byte{3}), len(b) - len(secret)
	}
	for _, n := range []int{0, 1, 20, 31, 33, 47, 65, 100} {
		b, refOffset := welcome(n)
		_, err := mls.ParseWelcome(b)
		if e := wantCode(t, err, mls.CodeMalformed); e.Field != "welcome.secrets.new_member" || e.Offset != refOffset {
			t.Errorf("ref of %d bytes: %v, want an error for new_member at byte %d", n, e, refOffset)
		}
	}
	for _, n := range []int{32, 48, 64} {
		b, _ := welcome(n)
		w, err := mls.ParseWelcome(b)
		if err != nil || len(w.NewMembers()) != 1 || len(w.NewMembers()[0]) != n {
			t.Errorf("ref of %d bytes: %v", n, err)
		}
	}
}

// fixtureMessages returns every fixture KeyPackage and Welcome in both forms.
func fixtureMessages(f *testkit.FixtureSet) map[string][]byte {
	m := map[string][]byte{}
	for _, fs := range f.Suites {
		for name, k := range fs.KeyPackages {
			m[fmt.Sprintf("suite=%d/%s/bare", fs.ID, name)] = k.Bare
			m[fmt.Sprintf("suite=%d/%s/framed", fs.ID, name)] = k.Message
		}
		m[fmt.Sprintf("suite=%d/welcome/framed", fs.ID)] = fs.Welcome.Message
		m[fmt.Sprintf("suite=%d/welcome/bare", fs.ID)] = fs.Welcome.Message[4:]
	}
	return m
}

// TestTruncatedAndTrailing cuts every fixture at every byte offset and
// appends bytes to it: each must fail with Malformed at an offset inside
// the input.
func TestTruncatedAndTrailing(t *testing.T) {
	f := testkit.Fixtures(t)
	for name, b := range fixtureMessages(f) {
		parse := parseKP
		if strings.Contains(name, "welcome") {
			parse = parseWelcome
		}
		t.Run(name, func(t *testing.T) {
			if err := parse(b); err != nil {
				t.Fatalf("the whole message fails: %v", err)
			}
			for i := range len(b) {
				err := parse(b[:i:i])
				var e *mls.Error
				if !errors.As(err, &e) || e.Code != mls.CodeMalformed || e.Offset < 0 || e.Offset > i {
					t.Fatalf("prefix of %d bytes: %v, want Malformed within the input", i, err)
				}
			}
			for _, extra := range [][]byte{{0}, {1, 2, 3}, b} {
				e := wantCode(t, parse(slices.Concat(b, extra)), mls.CodeMalformed)
				if e.Offset != len(b) || !strings.Contains(e.Msg, "trailing") {
					t.Errorf("%d extra bytes: %v, want trailing bytes at %d", len(extra), e, len(b))
				}
			}
		})
	}
}

// TestEveryByteCorrupted flips each byte of a KeyPackage in turn: every
// result must be rejected with a known code, and never panic.
func TestEveryByteCorrupted(t *testing.T) {
	f := testkit.Fixtures(t)
	reg := mls.FixtureRegistry(t, f)
	known := []mls.Code{mls.CodeMalformed, mls.CodeUnsupportedVersion, mls.CodeUnsupportedCipherSuite,
		mls.CodeInvalidKeyPackage, mls.CodeBadSignature, mls.CodeLifetimeInvalid, mls.CodeIdentityMismatch}
	for _, id := range []mls.CipherSuite{1, 2, 4} {
		k := f.Suite(t, uint16(id)).KeyPackages["alice_dev1"]
		policy := mls.FixturePolicy(k.Now())
		t.Run(fmt.Sprintf("suite=%d", id), func(t *testing.T) {
			for pos := range len(k.Message) {
				b := bytes.Clone(k.Message)
				b[pos] ^= 0xff
				_, err := reg.ValidateKeyPackage(b, mls.AliceDID, policy)
				var e *mls.Error
				if !errors.As(err, &e) || !slices.Contains(known, e.Code) {
					t.Fatalf("byte %d flipped: %v, want a rejection with a known code", pos, err)
				}
			}
		})
	}
}
