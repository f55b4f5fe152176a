package atproto

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k256ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// curve is one of the two signature algorithms of AT Protocol: ES256
// (NIST P-256) and ES256K (secp256k1). Signatures are 64 bytes r||s, big
// endian, with s in the lower half of the group order ("low-S").
type curve struct {
	// alg is the JWS alg name.
	alg string
	// multicodec is the varint multicodec prefix of the Multikey form of a
	// compressed public key.
	multicodec []byte
	// parseKey parses a compressed public key (33 bytes) and returns its
	// verification function.
	parseKey func(b []byte) (verifyFunc, error)
	// checkSignature checks a signature's shape: 64 bytes, r and s in
	// [1, n-1], s at most n/2.
	checkSignature func(sig []byte) error
}

// verifyFunc reports whether sig, already checked by
// curve.checkSignature, signs the SHA-256 digest.
type verifyFunc func(digest, sig []byte) bool

// publicKey is a DID's #atproto key.
type publicKey struct {
	curve  *curve
	verify verifyFunc
}

// verifies reports whether k verifies tok's signature: tok's alg must be
// k's curve.
func (k *publicKey) verifies(tok *token) bool {
	if k.curve != tok.curve {
		return false
	}
	digest := sha256.Sum256([]byte(tok.signingInput))
	return k.verify(digest[:], tok.signature)
}

const signatureLength = 64

var (
	p256Curve = &curve{
		alg:            "ES256",
		multicodec:     []byte{0x80, 0x24}, // p256-pub, 0x1200
		parseKey:       parseP256Key,
		checkSignature: checkP256Signature,
	}
	k256Curve = &curve{
		alg:            "ES256K",
		multicodec:     []byte{0xe7, 0x01}, // secp256k1-pub, 0xe7
		parseKey:       parseK256Key,
		checkSignature: checkK256Signature,
	}
	// curves maps a JWS alg to its curve.
	curves = map[string]*curve{p256Curve.alg: p256Curve, k256Curve.alg: k256Curve}
)

func badSignature(format string, args ...any) error {
	return unauthorized(ReasonBadSignature, format, args...)
}

var (
	p256Order     = elliptic.P256().Params().N
	p256HalfOrder = new(big.Int).Rsh(p256Order, 1)
)

func checkP256Signature(sig []byte) error {
	if len(sig) != signatureLength {
		return badSignature("the signature is %d bytes, not 64 (r||s)", len(sig))
	}
	r, s := splitP256Signature(sig)
	if r.Sign() == 0 || r.Cmp(p256Order) >= 0 || s.Sign() == 0 || s.Cmp(p256Order) >= 0 {
		return badSignature("r or s is out of range")
	}
	if s.Cmp(p256HalfOrder) > 0 {
		return badSignature("the signature is not low-S")
	}
	return nil
}

func splitP256Signature(sig []byte) (r, s *big.Int) {
	return new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
}

func parseP256Key(b []byte) (verifyFunc, error) {
	x, y := elliptic.UnmarshalCompressed(elliptic.P256(), b)
	if x == nil {
		return nil, errors.New("not a compressed P-256 point")
	}
	uncompressed := make([]byte, 65)
	uncompressed[0] = 4
	x.FillBytes(uncompressed[1:33])
	y.FillBytes(uncompressed[33:])
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), uncompressed)
	if err != nil {
		return nil, err
	}
	return func(digest, sig []byte) bool {
		r, s := splitP256Signature(sig)
		return ecdsa.Verify(pub, digest, r, s)
	}, nil
}

func checkK256Signature(sig []byte) error {
	if len(sig) != signatureLength {
		return badSignature("the signature is %d bytes, not 64 (r||s)", len(sig))
	}
	r, s, ok := splitK256Signature(sig)
	if !ok {
		return badSignature("r or s is out of range")
	}
	if r.IsZero() || s.IsZero() {
		return badSignature("r or s is zero")
	}
	if s.IsOverHalfOrder() {
		return badSignature("the signature is not low-S")
	}
	return nil
}

// splitK256Signature returns r and s; ok is false if either is not below
// the group order.
func splitK256Signature(sig []byte) (r, s secp256k1.ModNScalar, ok bool) {
	overflowR := r.SetByteSlice(sig[:32])
	overflowS := s.SetByteSlice(sig[32:])
	return r, s, !overflowR && !overflowS
}

func parseK256Key(b []byte) (verifyFunc, error) {
	if len(b) != 33 {
		return nil, errors.New("not a compressed secp256k1 point")
	}
	pub, err := secp256k1.ParsePubKey(b)
	if err != nil {
		return nil, err
	}
	return func(digest, sig []byte) bool {
		r, s, _ := splitK256Signature(sig)
		return k256ecdsa.NewSignature(&r, &s).Verify(digest, pub)
	}, nil
}

// parseMultikey parses a Multikey publicKeyMultibase: 'z' (base58btc),
// then a multicodec prefix (secp256k1-pub or p256-pub) and a compressed
// point.
func parseMultikey(s string) (*publicKey, error) {
	enc, ok := strings.CutPrefix(s, "z")
	if !ok {
		return nil, errors.New("publicKeyMultibase is not base58btc ('z')")
	}
	b, err := decodeBase58(enc)
	if err != nil {
		return nil, err
	}
	for _, c := range curves {
		if rest, ok := bytes.CutPrefix(b, c.multicodec); ok {
			verify, err := c.parseKey(rest)
			if err != nil {
				return nil, fmt.Errorf("%s Multikey: %w", c.alg, err)
			}
			return &publicKey{curve: c, verify: verify}, nil
		}
	}
	return nil, errors.New("the Multikey is neither secp256k1-pub nor p256-pub")
}

// base58Alphabet is the Bitcoin base58 alphabet used by base58btc.
const base58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// maxBase58Length bounds base58 input: a compressed key is about 48
// characters, and decoding is quadratic in the length.
const maxBase58Length = 128

var base58Digits = func() (d [256]int8) {
	for i := range d {
		d[i] = -1
	}
	for i := range len(base58Alphabet) {
		d[base58Alphabet[i]] = int8(i)
	}
	return d
}()

// decodeBase58 decodes base58btc: each leading '1' is a zero byte, the rest
// is a big-endian base-58 number.
func decodeBase58(s string) ([]byte, error) {
	if len(s) > maxBase58Length {
		return nil, fmt.Errorf("base58 string longer than %d characters", maxBase58Length)
	}
	zeros := len(s) - len(strings.TrimLeft(s, "1"))
	// Big-endian base-256 digits of the number, built digit by digit.
	var num []byte
	for i := zeros; i < len(s); i++ {
		carry := int(base58Digits[s[i]])
		if carry < 0 {
			return nil, fmt.Errorf("invalid base58 character %q", s[i])
		}
		for j := len(num) - 1; j >= 0; j-- {
			carry += int(num[j]) * 58
			num[j] = byte(carry)
			carry >>= 8
		}
		for ; carry > 0; carry >>= 8 {
			num = append([]byte{byte(carry)}, num...)
		}
	}
	return append(make([]byte, zeros), num...), nil
}
