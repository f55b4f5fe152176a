// Package mlstest makes real RFC 9420 KeyPackages and syntactically valid
// Welcomes for tests and benchmarks: every KeyPackage is validly signed
// with a fresh (or given) key of the suite's signature algorithm and passes
// mls.Registry.ValidateKeyPackage for its identity. Welcomes name the given
// KeyPackageRefs but carry random bytes where a real one carries HPKE
// ciphertexts, which kpd never decrypts.
//
// Nothing here is fit for production use: init and encryption keys are
// random bytes with no private key behind them.
package mlstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cloudflare/circl/sign/ed448"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"

	"github.com/kpd-dir/kpd/mls"
)

// Signer is a signature key pair of one suite's signature algorithm.
type Signer struct {
	public []byte
	sign   func(msg []byte) ([]byte, error)
}

// NewSigner generates a key pair for the signature algorithm of s (ed25519,
// ed448, p256, p384, p521 or mldsa87).
func NewSigner(s mls.Suite) (*Signer, error) {
	switch s.Signature {
	case "ed25519":
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return &Signer{public: pub, sign: func(msg []byte) ([]byte, error) {
			return ed25519.Sign(priv, msg), nil
		}}, nil
	case "ed448":
		pub, priv, err := ed448.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return &Signer{public: pub, sign: func(msg []byte) ([]byte, error) {
			return ed448.Sign(priv, msg, ""), nil
		}}, nil
	case "p256":
		return newECDSASigner(elliptic.P256(), crypto.SHA256)
	case "p384":
		return newECDSASigner(elliptic.P384(), crypto.SHA384)
	case "p521":
		return newECDSASigner(elliptic.P521(), crypto.SHA512)
	case "mldsa87":
		pub, priv, err := mldsa87.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return &Signer{public: pub.Bytes(), sign: func(msg []byte) ([]byte, error) {
			sig := make([]byte, mldsa87.SignatureSize)
			return sig, mldsa87.SignTo(priv, msg, nil, true, sig)
		}}, nil
	}
	return nil, fmt.Errorf("mlstest: suite %d has unknown signature algorithm %q", s.ID, s.Signature)
}

// newECDSASigner signs DER-encoded ECDSA over the hash that the curve's TLS
// signature scheme fixes.
func newECDSASigner(curve elliptic.Curve, hash crypto.Hash) (*Signer, error) {
	priv, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		return nil, err
	}
	pub, err := priv.PublicKey.Bytes()
	if err != nil {
		return nil, err
	}
	return &Signer{public: pub, sign: func(msg []byte) ([]byte, error) {
		h := hash.New()
		h.Write(msg)
		return ecdsa.SignASN1(rand.Reader, priv, h.Sum(nil))
	}}, nil
}

// PublicKey returns the signature_key that KeyPackages signed by s carry.
func (s *Signer) PublicKey() []byte { return s.public }

// SignWithLabel is RFC 9420 SignWithLabel.
func (s *Signer) SignWithLabel(label string, content []byte) ([]byte, error) {
	return s.sign(mls.SignContent(label, content))
}

// Options describe a KeyPackage to make. The zero value makes a valid
// KeyPackage of DefaultIdentity, valid from an hour ago for 30 days.
type Options struct {
	// Identity is the basic credential's identity; "" means
	// DefaultIdentity.
	Identity string
	// NotBefore and NotAfter are the lifetime; zero means one hour before
	// now and 30 days after now.
	NotBefore, NotAfter time.Time
	// LastResort adds the last_resort KeyPackage extension.
	LastResort bool
	// Signer signs the KeyPackage; nil means a new key pair.
	Signer *Signer
	// Modify, when set, may change the KeyPackage after it is filled in and
	// before it is encoded and signed, to make KeyPackages that are invalid
	// in one precise way. The signatures always cover the LeafNode and
	// KeyPackage as encoded (as for a key_package leaf), so only a change
	// that breaks a rule other than the signatures makes them fail. A
	// credential of a type other than basic and x509 is encoded with
	// Identity as its body.
	Modify func(*mls.KeyPackage)
}

// DefaultIdentity is the identity of KeyPackages made without one.
const DefaultIdentity = "did:plc:mlstestmlstestmlstest#dev"

// KeyPackage returns a bare KeyPackage of suite s and its KeyPackageRef. It
// passes s's Registry's ValidateKeyPackage for the DID of o.Identity (the
// part before '#') at a time within its lifetime, unless o.Modify broke it.
func KeyPackage(s mls.Suite, o Options) (bare []byte, ref []byte, err error) {
	signer := o.Signer
	if signer == nil {
		if signer, err = NewSigner(s); err != nil {
			return nil, nil, err
		}
	}
	kp := newKeyPackage(s, o, signer.PublicKey())
	if o.Modify != nil {
		o.Modify(kp)
	}
	tbs := appendLeafNodeTBS(nil, &kp.LeafNode)
	if kp.LeafNode.Signature, err = signer.SignWithLabel("LeafNodeTBS", tbs); err != nil {
		return nil, nil, err
	}
	tbs = appendKeyPackageTBS(nil, kp)
	if kp.Signature, err = signer.SignWithLabel("KeyPackageTBS", tbs); err != nil {
		return nil, nil, err
	}
	bare = mls.AppendOpaque(tbs, kp.Signature)
	kp.Raw = bare
	return bare, kp.Ref(s), nil
}

// newKeyPackage fills in a valid, unsigned KeyPackage.
func newKeyPackage(s mls.Suite, o Options, signatureKey []byte) *mls.KeyPackage {
	identity := o.Identity
	if identity == "" {
		identity = DefaultIdentity
	}
	now := time.Now()
	notBefore, notAfter := o.NotBefore, o.NotAfter
	if notBefore.IsZero() {
		notBefore = now.Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = now.Add(30 * 24 * time.Hour)
	}
	keySize := kemPublicKeySize(s.ID)
	keys := randomBytes(2 * keySize)
	kp := &mls.KeyPackage{
		Version:     mls.ProtocolMLS10,
		CipherSuite: s.ID,
		InitKey:     keys[:keySize:keySize],
		LeafNode: mls.LeafNode{
			EncryptionKey: keys[keySize:],
			SignatureKey:  signatureKey,
			Credential:    mls.Credential{Type: mls.CredentialBasic, Identity: []byte(identity)},
			Capabilities: mls.Capabilities{
				Versions:     []uint16{mls.ProtocolMLS10},
				CipherSuites: []uint16{uint16(s.ID)},
				Credentials:  []uint16{mls.CredentialBasic},
			},
			Source:   mls.SourceKeyPackage,
			Lifetime: &mls.Lifetime{NotBefore: unixSeconds(notBefore), NotAfter: unixSeconds(notAfter)},
		},
	}
	if o.LastResort {
		kp.Extensions = []mls.Extension{{Type: mls.ExtensionLastResort}}
	}
	return kp
}

func unixSeconds(t time.Time) uint64 { return uint64(max(t.Unix(), 0)) }

// kemPublicKeySize is the HPKE public key size of the suite's KEM (32 for
// suites that are not RFC 9420's).
func kemPublicKeySize(id mls.CipherSuite) int {
	switch id {
	case 2:
		return 65 // P-256
	case 4, 6:
		return 56 // X448
	case 5:
		return 133 // P-521
	case 7:
		return 97 // P-384
	}
	return 32 // X25519
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// MLSMessage frames body as an MLSMessage (version mls10) of the given
// wire format.
func MLSMessage(wireFormat uint16, body []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, mls.ProtocolMLS10)
	b = binary.BigEndian.AppendUint16(b, wireFormat)
	return append(b, body...)
}

// Welcome returns an MLSMessage(mls_welcome) of suite s naming refs as its
// new members, with random bytes as HPKE ciphertexts and group info. It
// fails without refs, or with a ref that is not 32, 48 or 64 bytes long (the
// Welcome would not parse).
func Welcome(s mls.Suite, refs ...[]byte) ([]byte, error) {
	if len(refs) == 0 {
		return nil, fmt.Errorf("mlstest: a Welcome needs at least one new member")
	}
	var secrets []byte
	for i, ref := range refs {
		if n := len(ref); n != 32 && n != 48 && n != 64 {
			return nil, fmt.Errorf("mlstest: ref %d is %d bytes, not a KeyPackageRef", i, n)
		}
		secrets = mls.AppendOpaque(secrets, ref)
		secrets = mls.AppendOpaque(secrets, randomBytes(kemPublicKeySize(s.ID)))
		secrets = mls.AppendOpaque(secrets, randomBytes(96))
	}
	w := binary.BigEndian.AppendUint16(nil, uint16(s.ID))
	w = mls.AppendOpaque(w, secrets)
	w = mls.AppendOpaque(w, randomBytes(512))
	return MLSMessage(mls.WireFormatWelcome, w), nil
}
