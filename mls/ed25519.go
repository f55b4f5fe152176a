package mls

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"errors"

	"filippo.io/edwards25519"
)

// Ed25519 signatures are verified as RFC 8032 (section 5.1.7) specifies:
// S below the group order, the public key A and the signature's R decoded
// strictly (section 5.1.3: a non-canonical encoding fails), and the
// cofactored group equation [8][S]B = [8]R + [8][k]A with
// k = SHA-512(R || A || message). RFC 8032 allows the cofactorless equation
// too; the cofactored one is what makes batch verification agree with
// verifying one signature at a time, so kpd uses it for both. The two
// equations differ only for signatures that their signer built with a
// small-order component on purpose; see docs/DESIGN.md.

// ed25519Key is a decoded Ed25519 public key: its encoding, which the
// signature hash covers, and the point A.
type ed25519Key struct {
	enc []byte
	a   *edwards25519.Point
}

func parseEd25519(pub []byte) (publicKey, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, keySizeError(len(pub), ed25519.PublicKeySize)
	}
	if !canonicalPoint(pub) {
		return nil, errors.New("not a canonical point encoding")
	}
	a, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, errors.New("not a point on the curve")
	}
	return &ed25519Key{enc: pub, a: a}, nil
}

// verify checks one signature: [8]([S]B - [k]A - R) is the identity.
func (k *ed25519Key) verify(msg, sig []byte) bool {
	r, s, ok := splitEd25519(sig)
	if !ok {
		return false
	}
	var negA edwards25519.Point
	negA.Negate(k.a)
	var p edwards25519.Point
	p.VarTimeDoubleScalarBaseMult(k.challenge(sig[:32], msg), &negA, s)
	p.Subtract(&p, r)
	p.MultByCofactor(&p)
	return p.Equal(edwards25519.NewIdentityPoint()) == 1
}

// challenge is k = SHA-512(R || A || msg) reduced modulo the group order.
func (k *ed25519Key) challenge(rEnc, msg []byte) *edwards25519.Scalar {
	h := sha512.New()
	h.Write(rEnc)
	h.Write(k.enc)
	h.Write(msg)
	var digest [sha512.Size]byte
	c, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		panic("mls: SetUniformBytes refused 64 bytes: " + err.Error())
	}
	return c
}

// splitEd25519 decodes a signature R || S strictly: R a canonical encoding
// of a curve point, S below the group order.
func splitEd25519(sig []byte) (*edwards25519.Point, *edwards25519.Scalar, bool) {
	if len(sig) != ed25519.SignatureSize || !canonicalPoint(sig[:32]) {
		return nil, nil, false
	}
	r, err := new(edwards25519.Point).SetBytes(sig[:32])
	if err != nil {
		return nil, nil, false
	}
	s, err := new(edwards25519.Scalar).SetCanonicalBytes(sig[32:])
	if err != nil {
		return nil, nil, false
	}
	return r, s, true
}

// canonicalPoint reports whether the 32 bytes of b are a canonical Edwards25519
// point encoding (RFC 8032 section 5.1.3): the y coordinate below
// p = 2^255-19, and the sign bit of x clear when x is 0 (y = 1 or y = p-1).
// It does not check that b is on the curve; decoding does that.
func canonicalPoint(b []byte) bool {
	high := true // bytes 1-30 are 0xff and bits 248-254 are set
	low := true  // bytes 1-30 are 0 and bits 248-254 are clear
	for _, c := range b[1:31] {
		high = high && c == 0xff
		low = low && c == 0
	}
	high = high && b[31]&0x7f == 0x7f
	low = low && b[31]&0x7f == 0
	sign := b[31]>>7 == 1
	switch {
	case high && b[0] >= 0xed: // y >= p
		return false
	case sign && high && b[0] == 0xec: // y = p-1, x = 0
		return false
	case sign && low && b[0] == 1: // y = 1, x = 0
		return false
	}
	return true
}

// ed25519Batch collects Ed25519 signature checks to verify together. A
// failed batch does not say which check failed; the caller then verifies
// one by one.
//
// The checks i hold together when, for random 128-bit z_i,
//
//	[8]( [-Σ z_i S_i]B + Σ [z_i]R_i + Σ [z_i k_i]A_i ) = 0.
//
// A device signs its KeyPackages with one key, and both signatures of a
// KeyPackage use it, so the terms of each distinct key are summed into one:
// a publish of n KeyPackages from one device is one multi-scalar
// multiplication of about 2n+2 points instead of 4n+1, and its key is
// decoded once (signatureKey) instead of once per signature.
type ed25519Batch struct {
	checks  []ed25519Check
	lastKey *ed25519Key // the key signatureKey parsed last
}

type ed25519Check struct {
	key      *ed25519Key
	msg, sig []byte
}

func (b *ed25519Batch) add(k *ed25519Key, msg, sig []byte) {
	b.checks = append(b.checks, ed25519Check{key: k, msg: msg, sig: sig})
}

// signatureKey is parseSignatureKey, which it calls unless pub is the
// Ed25519 key it returned last: the KeyPackages of a publish usually share
// one key, so it is decoded once. b may be nil.
func (b *ed25519Batch) signatureKey(s Suite, pub []byte) (publicKey, *Error) {
	if b == nil {
		return parseSignatureKey(s, pub)
	}
	if b.lastKey != nil && s.Signature == "ed25519" && bytes.Equal(b.lastKey.enc, pub) {
		return b.lastKey, nil
	}
	k, err := parseSignatureKey(s, pub)
	if ek, ok := k.(*ed25519Key); ok {
		b.lastKey = ek
	}
	return k, err
}

// len is the number of checks added.
func (b *ed25519Batch) len() int { return len(b.checks) }

// truncate drops the checks added after the first n.
func (b *ed25519Batch) truncate(n int) { b.checks = b.checks[:n] }

// verify reports whether every check holds; an empty batch holds. With
// probability 1-2^-128 it agrees with verifying each check on its own.
func (b *ed25519Batch) verify() bool {
	n := len(b.checks)
	if n == 0 {
		return true
	}
	if n == 1 {
		c := b.checks[0]
		return c.key.verify(c.msg, c.sig)
	}
	zs := make([]byte, 16*n)
	if _, err := rand.Read(zs); err != nil {
		panic("mls: crypto/rand failed: " + err.Error())
	}
	// Terms: B, then one per R_i, then one per distinct key.
	scalars := make([]edwards25519.Scalar, 1, 1+n+1)
	points := make([]*edwards25519.Point, 1, 1+n+1)
	points[0] = edwards25519.NewGeneratorPoint()
	keyTerm := make(map[[32]byte]int, 1)
	var z, zk edwards25519.Scalar
	var zBytes [32]byte
	for i, c := range b.checks {
		r, s, ok := splitEd25519(c.sig)
		if !ok {
			return false
		}
		copy(zBytes[:16], zs[16*i:])
		if _, err := z.SetCanonicalBytes(zBytes[:]); err != nil {
			panic("mls: a 128-bit scalar is not canonical")
		}
		scalars[0].MultiplyAdd(&z, s, &scalars[0]) // Σ z_i S_i, negated below
		scalars = append(scalars, z)
		points = append(points, r)

		zk.Multiply(&z, c.key.challenge(c.sig[:32], c.msg))
		enc := [32]byte(c.key.enc)
		j, seen := keyTerm[enc]
		if !seen {
			j = len(scalars)
			keyTerm[enc] = j
			scalars = append(scalars, edwards25519.Scalar{})
			points = append(points, c.key.a)
		}
		scalars[j].Add(&scalars[j], &zk)
	}
	scalars[0].Negate(&scalars[0])
	ptrs := make([]*edwards25519.Scalar, len(scalars))
	for i := range scalars {
		ptrs[i] = &scalars[i]
	}
	var p edwards25519.Point
	p.VarTimeMultiScalarMult(ptrs, points)
	p.MultByCofactor(&p)
	return p.Equal(edwards25519.NewIdentityPoint()) == 1
}
