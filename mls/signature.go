package mls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"

	"github.com/cloudflare/circl/sign/ed448"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// publicKey is a parsed signature_key.
type publicKey interface {
	verify(msg, sig []byte) bool
}

// signatureSchemes maps a Suite.Signature name to the parser of its public
// keys. A parser rejects keys of the wrong size or encoding with an error
// that says why.
var signatureSchemes = map[string]func(pub []byte) (publicKey, error){
	"ed25519": parseEd25519,
	"ed448":   parseEd448,
	"p256":    ecdsaParser(elliptic.P256(), crypto.SHA256),
	"p384":    ecdsaParser(elliptic.P384(), crypto.SHA384),
	"p521":    ecdsaParser(elliptic.P521(), crypto.SHA512),
	"mldsa87": parseMLDSA87,
}

type ed448Key ed448.PublicKey

func parseEd448(pub []byte) (publicKey, error) {
	if len(pub) != ed448.PublicKeySize {
		return nil, keySizeError(len(pub), ed448.PublicKeySize)
	}
	return ed448Key(pub), nil
}

// verify checks a pure Ed448 signature with an empty context (RFC 8032).
func (k ed448Key) verify(msg, sig []byte) bool {
	return ed448.Verify(ed448.PublicKey(k), msg, sig, "")
}

// ecdsaKey is an ECDSA key with the hash its TLS signature scheme fixes
// (ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, ecdsa_secp521r1_sha512).
type ecdsaKey struct {
	pub  *ecdsa.PublicKey
	hash crypto.Hash
}

// ecdsaParser parses SEC 1 points of curve: uncompressed, as RFC 9420
// specifies, or compressed, as some implementations (ts-mls) send.
func ecdsaParser(curve elliptic.Curve, hash crypto.Hash) func([]byte) (publicKey, error) {
	return func(pub []byte) (publicKey, error) {
		point := pub
		if len(pub) > 0 && (pub[0] == 2 || pub[0] == 3) {
			point = decompress(curve, pub)
		}
		k, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, fmt.Errorf("not a %s point (%d bytes)", curve.Params().Name, len(pub))
		}
		return ecdsaKey{pub: k, hash: hash}, nil
	}
}

// decompress returns the uncompressed form of a compressed point, or nil if
// it is not a point of curve.
func decompress(curve elliptic.Curve, compressed []byte) []byte {
	x, y := elliptic.UnmarshalCompressed(curve, compressed)
	if x == nil {
		return nil
	}
	size := (curve.Params().BitSize + 7) / 8
	point := make([]byte, 1+2*size)
	point[0] = 4
	x.FillBytes(point[1 : 1+size])
	y.FillBytes(point[1+size:])
	return point
}

// verify checks a DER-encoded ECDSA signature over the hash of msg.
func (k ecdsaKey) verify(msg, sig []byte) bool {
	h := k.hash.New()
	h.Write(msg)
	return ecdsa.VerifyASN1(k.pub, h.Sum(nil), sig)
}

type mldsa87Key struct{ pub *mldsa87.PublicKey }

func parseMLDSA87(pub []byte) (publicKey, error) {
	if len(pub) != mldsa87.PublicKeySize {
		return nil, keySizeError(len(pub), mldsa87.PublicKeySize)
	}
	var k mldsa87.PublicKey
	if err := k.UnmarshalBinary(pub); err != nil {
		return nil, fmt.Errorf("not an ML-DSA-87 public key")
	}
	return mldsa87Key{&k}, nil
}

// verify checks a pure ML-DSA-87 signature with an empty context (FIPS 204).
func (k mldsa87Key) verify(msg, sig []byte) bool {
	return mldsa87.Verify(k.pub, msg, nil, sig)
}

func keySizeError(got, want int) error {
	return fmt.Errorf("key is %d bytes, want %d", got, want)
}

// SignContent returns the bytes that RFC 9420 SignWithLabel signs and
// VerifyWithLabel verifies (section 5.1.2): the SignContent struct
// {opaque label<V> = "MLS 1.0 " + label; opaque content<V>}.
func SignContent(label string, content []byte) []byte {
	const prefix = "MLS 1.0 "
	b := make([]byte, 0, 8+len(prefix)+len(label)+len(content))
	b = appendVarint(b, len(prefix)+len(label))
	b = append(append(b, prefix...), label...)
	return AppendOpaque(b, content)
}

// parseSignatureKey parses a leaf's signature_key for suite s.
func parseSignatureKey(s Suite, pub []byte) (publicKey, *Error) {
	parse, ok := signatureSchemes[s.Signature]
	if !ok {
		return nil, errorf(CodeUnsupportedCipherSuite, "cipher_suite", "suite %d has unknown signature algorithm %q", s.ID, s.Signature)
	}
	k, err := parse(pub)
	if err != nil {
		return nil, errorf(CodeBadSignature, "key_package.leaf_node.signature_key", "invalid %s signature key: %v", s.Signature, err)
	}
	return k, nil
}

// verifyWithLabel is RFC 9420 VerifyWithLabel.
func verifyWithLabel(k publicKey, field, label string, content, sig []byte) *Error {
	if !k.verify(SignContent(label, content), sig) {
		return errorf(CodeBadSignature, field, "%s signature does not verify with leaf_node.signature_key", label)
	}
	return nil
}
