// Package mls parses and verifies the parts of RFC 9420 (Messaging Layer
// Security) that kpd handles: KeyPackages and Welcome messages, received as
// untrusted bytes.
//
// It decodes MLSMessage-framed or bare KeyPackages and Welcomes, computes
// KeyPackageRefs (RFC 9420 section 5.2), verifies the LeafNode and
// KeyPackage signatures (Ed25519, Ed448, ECDSA P-256/P-384/P-521 and
// ML-DSA-87), and applies kpd's validation policy (lifetime, credential
// identity). It never decrypts anything and holds no private keys.
//
// Decoding is strict: exactly one structure with no trailing bytes, minimal
// variable-length integers only, every length checked against the bytes
// remaining before anything is allocated, so a short input can never cause
// a large allocation. Parsed byte fields are sub-slices of the input, not
// copies.
//
// Every error is an *Error carrying a stable Code (the reason names of
// kpd's SPEC section 3), the RFC 9420 field at fault and, for decoding
// errors, the byte offset. Error texts never contain key material,
// credentials or message bytes.
//
// A Registry holds the accepted cipher suites: RFC 9420 suites 1-7 are built
// in, other code points are added with Registry.Add.
package mls
