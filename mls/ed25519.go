package mls

import (
	"crypto/ed25519"
	"errors"

	"github.com/hdevalence/ed25519consensus"
)

// Ed25519 signatures are verified as RFC 8032 (section 5.1.7) specifies:
// S below the group order, the public key A and the signature's R decoded
// strictly (section 5.1.3: a non-canonical encoding fails), and the
// cofactored group equation [8][S]B = [8]R + [8][k]A. RFC 8032 allows the
// cofactorless equation too; the cofactored one is what makes batch
// verification agree with verifying one signature at a time, so kpd uses it
// for both. The two equations differ only for signatures that their signer
// built with a small-order component on purpose; see docs/DESIGN.md.

type ed25519Key ed25519.PublicKey

func parseEd25519(pub []byte) (publicKey, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, keySizeError(len(pub), ed25519.PublicKeySize)
	}
	if !canonicalPoint(pub) {
		return nil, errors.New("not a canonical point encoding")
	}
	return ed25519Key(pub), nil
}

func (k ed25519Key) verify(msg, sig []byte) bool {
	return len(sig) == ed25519.SignatureSize && canonicalPoint(sig[:32]) &&
		ed25519consensus.Verify(ed25519.PublicKey(k), msg, sig)
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

// ed25519Batch collects Ed25519 signature checks to verify together: batch
// verification of the signatures of a publish costs about half as much CPU
// as verifying them one by one. A failed batch does not say which check
// failed; the caller then verifies one by one.
type ed25519Batch struct {
	checks []ed25519Check
}

type ed25519Check struct {
	key      ed25519Key
	msg, sig []byte
}

func (b *ed25519Batch) add(k ed25519Key, msg, sig []byte) {
	b.checks = append(b.checks, ed25519Check{key: k, msg: msg, sig: sig})
}

// len is the number of checks added.
func (b *ed25519Batch) len() int { return len(b.checks) }

// truncate drops the checks added after the first n.
func (b *ed25519Batch) truncate(n int) { b.checks = b.checks[:n] }

// verify reports whether every check holds; an empty batch holds. With
// probability 1-2^-128 it agrees with verifying each check on its own.
func (b *ed25519Batch) verify() bool {
	if len(b.checks) == 0 {
		return true
	}
	bv := ed25519consensus.NewPreallocatedBatchVerifier(len(b.checks))
	for _, c := range b.checks {
		if len(c.sig) != ed25519.SignatureSize || !canonicalPoint(c.sig[:32]) {
			return false
		}
		bv.Add(ed25519.PublicKey(c.key), c.msg, c.sig)
	}
	return bv.Verify()
}
