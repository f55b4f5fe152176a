package mls

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"

	"filippo.io/edwards25519"
)

func TestCanonicalPoint(t *testing.T) {
	p := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			t.Fatalf("bad test point %q", s)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"y = 0", p("0000000000000000000000000000000000000000000000000000000000000000"), true},
		{"y = 1 (identity)", p("0100000000000000000000000000000000000000000000000000000000000000"), true},
		{"y = 1, x negative", p("0100000000000000000000000000000000000000000000000000000000000080"), false},
		{"y = p-1", p("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), true},
		{"y = p-1, x negative", p("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"), false},
		{"y = p-2, x negative", p("ebffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"), true},
		{"y = p", p("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), false},
		{"y = p+1", p("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), false},
		{"y = 2^255-1", p("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), false},
		{"y = 2^255-1, x negative", p("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"), false},
		{"y = 2^248-1+p-1 (one byte short of p)", p("edfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe7f"), true},
		{"generator", edwards25519.NewGeneratorPoint().Bytes(), true},
	} {
		if got := canonicalPoint(tc.b); got != tc.want {
			t.Errorf("%s: canonicalPoint = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// rawSigner signs with an Ed25519 secret scalar directly, so that tests can
// choose R: RFC 8032 signing with R = [r]B + T for a point T of their
// choice.
type rawSigner struct {
	a   *edwards25519.Scalar
	pub []byte
}

func newRawSigner(t *testing.T) rawSigner {
	t.Helper()
	a, err := new(edwards25519.Scalar).SetUniformBytes(randomBytes(t, 64))
	if err != nil {
		t.Fatal(err)
	}
	return rawSigner{a: a, pub: new(edwards25519.Point).ScalarBaseMult(a).Bytes()}
}

// sign returns R || S with R encoded as encR(R), where R = [r]B + T.
func (s rawSigner) sign(t *testing.T, msg []byte, T *edwards25519.Point, encR func(*edwards25519.Point) []byte) []byte {
	t.Helper()
	r, err := new(edwards25519.Scalar).SetUniformBytes(randomBytes(t, 64))
	if err != nil {
		t.Fatal(err)
	}
	R := new(edwards25519.Point).ScalarBaseMult(r)
	R.Add(R, T)
	return s.finish(t, msg, encR(R), r)
}

// finish completes an RFC 8032 signature of msg whose R is encoded as
// rBytes and whose nonce is r: S = r + k·a.
func (s rawSigner) finish(t *testing.T, msg, rBytes []byte, r *edwards25519.Scalar) []byte {
	t.Helper()
	h := sha512.New()
	h.Write(rBytes)
	h.Write(s.pub)
	h.Write(msg)
	k, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(nil))
	if err != nil {
		t.Fatal(err)
	}
	S := new(edwards25519.Scalar).MultiplyAdd(k, s.a, r)
	return append(rBytes, S.Bytes()...)
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// point decodes a point and checks its order: the smallest n in 1, 2, 4, 8
// with [n]P = 0.
func point(t *testing.T, s string, order int) *edwards25519.Point {
	t.Helper()
	b, _ := hex.DecodeString(s)
	P, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	id := edwards25519.NewIdentityPoint()
	got, Q := 1, new(edwards25519.Point).Set(P)
	for Q.Equal(id) != 1 && got <= 8 {
		Q.Add(Q, P)
		got++
	}
	if got != order {
		t.Fatalf("%s has order %d, want %d", s, got, order)
	}
	return P
}

// verifyBoth verifies sig with ed25519Key.verify and as a batch of one and
// of three (with two good signatures), and fails unless all agree with want.
func verifyBoth(t *testing.T, name string, s rawSigner, msg, sig []byte, want bool) {
	t.Helper()
	k, err := parseEd25519(s.pub)
	if err != nil {
		t.Fatal(err)
	}
	if got := k.verify(msg, sig); got != want {
		t.Errorf("%s: verify = %v, want %v", name, got, want)
	}
	var one ed25519Batch
	one.add(k.(*ed25519Key), msg, sig)
	if got := one.verify(); got != want {
		t.Errorf("%s: batch of one = %v, want %v", name, got, want)
	}
	id := edwards25519.NewIdentityPoint()
	var three ed25519Batch
	for _, m := range [][]byte{[]byte("a"), []byte("b")} {
		three.add(k.(*ed25519Key), m, s.sign(t, m, id, (*edwards25519.Point).Bytes))
	}
	three.add(k.(*ed25519Key), msg, sig)
	if got := three.verify(); got != want {
		t.Errorf("%s: batch of three = %v, want %v", name, got, want)
	}
}

// TestEd25519Rules pins down the Ed25519 rules of RFC 8032 section 5.1.7
// that kpd follows: strict decoding of A and R, and the cofactored equation.
func TestEd25519Rules(t *testing.T) {
	s := newRawSigner(t)
	msg := []byte("MLS 1.0 KeyPackageTBS")
	id := edwards25519.NewIdentityPoint()
	canonical := (*edwards25519.Point).Bytes

	good := s.sign(t, msg, id, canonical)
	if !ed25519.Verify(s.pub, msg, good) {
		t.Fatal("crypto/ed25519 rejects the raw signer's signature")
	}
	verifyBoth(t, "good", s, msg, good, true)
	bad := append([]byte(nil), good...)
	bad[40] ^= 1
	verifyBoth(t, "S changed", s, msg, bad, false)

	// S at or above the group order is refused.
	high := append([]byte(nil), good...)
	S, _ := new(edwards25519.Scalar).SetCanonicalBytes(good[32:])
	sPlusL := addOrder(S.Bytes())
	copy(high[32:], sPlusL)
	verifyBoth(t, "S + l", s, msg, high, false)

	// R = [r]B + T with T of order 8: [S]B - [k]A - R = -T is not the
	// identity, so the cofactorless equation (crypto/ed25519) fails, and
	// [8](-T) is, so the cofactored one of RFC 8032 holds.
	T := point(t, "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", 8)
	torsion := s.sign(t, msg, T, canonical)
	if ed25519.Verify(s.pub, msg, torsion) {
		t.Fatal("crypto/ed25519 accepts a signature with a torsion component")
	}
	verifyBoth(t, "R with a torsion component", s, msg, torsion, true)

	// A point with y < 19 has a second encoding below 2^255, y + p. A
	// signature whose R is so encoded (and whose k hashes those bytes) is
	// refused, as RFC 8032 decoding requires, though its equation holds:
	// with the canonical encoding it verifies. The order-4 point with
	// y = 0 serves as R (r = 0).
	T4 := point(t, "0000000000000000000000000000000000000000000000000000000000000000", 4)
	nonCanonical := func(P *edwards25519.Point) []byte {
		b := P.Bytes()
		if b[0] != 0 || b[31]&0x7f != 0 {
			t.Fatalf("R is not y = 0: %x", b)
		}
		// y = p, sign bit kept: p = 2^255-19 = ed ff .. ff 7f.
		out := []byte{0xed}
		for range 30 {
			out = append(out, 0xff)
		}
		return append(out, 0x7f|b[31]&0x80)
	}
	rZero := s.signWithR(t, msg, T4, nonCanonical)
	verifyBoth(t, "R = y + p", s, msg, rZero, false)
	verifyBoth(t, "R = y, the same point", s, msg, s.signWithR(t, msg, T4, canonical), true)

	// A public key encoded with y + p is refused when it is parsed.
	if _, err := parseEd25519(nonCanonical(T4)); err == nil {
		t.Error("parseEd25519 accepts y = p")
	}
	if _, err := parseEd25519(T4.Bytes()); err != nil {
		t.Errorf("parseEd25519 refuses a canonical small-order key: %v", err)
	}
}

// signWithR signs msg with R = P exactly (r = 0 and R's torsion part P),
// encoded by encR.
func (s rawSigner) signWithR(t *testing.T, msg []byte, P *edwards25519.Point, encR func(*edwards25519.Point) []byte) []byte {
	t.Helper()
	return s.finish(t, msg, encR(P), edwards25519.NewScalar())
}

// addOrder returns the little-endian 32-byte s + l, for s < 2^256 - l.
func addOrder(s []byte) []byte {
	l, _ := hex.DecodeString("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
	out := make([]byte, 32)
	carry := 0
	for i := range out {
		v := int(s[i]) + int(l[i]) + carry
		out[i], carry = byte(v), v>>8
	}
	return out
}

// TestEd25519BatchKeys checks batches whose checks use several keys,
// interleaved (the batch sums the terms of each key): they hold when every
// signature is good, and fail when one is bad or is checked with another
// signer's key.
func TestEd25519BatchKeys(t *testing.T) {
	id := edwards25519.NewIdentityPoint()
	type check struct {
		key      *ed25519Key
		msg, sig []byte
	}
	var checks []check
	signers := []rawSigner{newRawSigner(t), newRawSigner(t), newRawSigner(t)}
	keys := make([]*ed25519Key, len(signers))
	for i, s := range signers {
		k, err := parseEd25519(s.pub)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.(*ed25519Key)
	}
	for i := range 12 {
		j := i * 7 % len(signers) // 0, 1, 2, 0, ...
		msg := fmt.Appendf(nil, "message %d", i)
		checks = append(checks, check{keys[j], msg, signers[j].sign(t, msg, id, (*edwards25519.Point).Bytes)})
	}
	batch := func(edit func(cs []check)) bool {
		cs := slices.Clone(checks)
		edit(cs)
		var b ed25519Batch
		for _, c := range cs {
			b.add(c.key, c.msg, c.sig)
		}
		return b.verify()
	}
	if !batch(func([]check) {}) {
		t.Error("a batch of good signatures by three keys fails")
	}
	for i := range checks {
		if batch(func(cs []check) { cs[i].key = keys[(slices.Index(keys, cs[i].key)+1)%len(keys)] }) {
			t.Errorf("check %d with another signer's key: the batch holds", i)
		}
		if batch(func(cs []check) { cs[i].msg = []byte("another message") }) {
			t.Errorf("check %d of another message: the batch holds", i)
		}
	}
}
