package mls

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"slices"
)

// Protocol constants of RFC 9420.
const (
	// ProtocolMLS10 is the ProtocolVersion mls10.
	ProtocolMLS10 uint16 = 1

	// WireFormatWelcome is the MLSMessage wire_format mls_welcome.
	WireFormatWelcome uint16 = 3
	// WireFormatKeyPackage is the MLSMessage wire_format mls_key_package.
	WireFormatKeyPackage uint16 = 5

	// CredentialBasic is the basic credential type (an opaque identity).
	CredentialBasic uint16 = 1
	// CredentialX509 is the x509 credential type (a certificate chain).
	CredentialX509 uint16 = 2

	// SourceKeyPackage, SourceUpdate and SourceCommit are the values of
	// leaf_node_source.
	SourceKeyPackage uint8 = 1
	SourceUpdate     uint8 = 2
	SourceCommit     uint8 = 3

	// ExtensionLastResort is the KeyPackage extension type last_resort.
	ExtensionLastResort uint16 = 0x000a
)

// KeyPackage is a parsed RFC 9420 KeyPackage (section 10). Its byte fields
// are sub-slices of the input given to ParseKeyPackage, which must not be
// modified while the KeyPackage is in use.
type KeyPackage struct {
	Version     uint16
	CipherSuite CipherSuite
	InitKey     []byte
	LeafNode    LeafNode
	Extensions  []Extension
	Signature   []byte
	// Raw is the bare KeyPackage bytes (without any MLSMessage header),
	// the input of the KeyPackageRef.
	Raw []byte

	// tbs is the KeyPackageTBS: Raw without the signature.
	tbs []byte
}

// LeafNode is a parsed RFC 9420 LeafNode (section 7.2).
type LeafNode struct {
	EncryptionKey, SignatureKey []byte
	Credential                  Credential
	Capabilities                Capabilities
	// Source is the leaf_node_source: SourceKeyPackage, SourceUpdate or
	// SourceCommit.
	Source uint8
	// Lifetime is set when Source is SourceKeyPackage.
	Lifetime *Lifetime
	// ParentHash is set when Source is SourceCommit.
	ParentHash []byte
	Extensions []Extension
	Signature  []byte

	// tbs is the LeafNode without its signature, which is the LeafNodeTBS
	// of a SourceKeyPackage leaf.
	tbs []byte
}

// Credential is a basic or x509 credential (RFC 9420 section 5.3).
type Credential struct {
	Type uint16
	// Identity is the identity of a basic credential.
	Identity []byte
	// Certificates is the certificate chain of an x509 credential.
	Certificates [][]byte
}

// Capabilities lists what a client supports (RFC 9420 section 7.2).
type Capabilities struct {
	Versions, CipherSuites, Extensions, Proposals, Credentials []uint16
}

// Lifetime is a KeyPackage leaf's validity, in Unix seconds.
type Lifetime struct {
	NotBefore, NotAfter uint64
}

// Extension is an RFC 9420 extension: a type and opaque data.
type Extension struct {
	Type uint16
	Data []byte
}

// ParseKeyPackage parses one KeyPackage from b, which is either an
// MLSMessage with wire_format mls_key_package or a bare KeyPackage. It
// checks the syntax and the protocol version only; ValidateKeyPackage runs
// every check.
//
// The two forms are told apart this way: when the second uint16 of b is 5
// (mls_key_package), b is first parsed as an MLSMessage; if that parses
// completely with no trailing bytes, and its KeyPackage has the
// MLSMessage's version, it is one. Otherwise b is parsed as a bare
// KeyPackage (whose second uint16 is its cipher suite, which may also be
// 5); if that fails too, an MLSMessage that parsed is taken as one. When neither parses, b is taken for an MLSMessage if the two bytes
// after the MLSMessage header (the KeyPackage version) equal its first two
// (the MLSMessage version): the error is then that of the MLSMessage form,
// or a wrong wire_format. Otherwise it is the bare form's error.
//
// Errors are *Error with code Malformed (bad syntax, trailing bytes,
// non-minimal lengths), UnsupportedVersion (a version other than mls10, or
// an MLSMessage version that differs from the KeyPackage's), or
// InvalidKeyPackage (a credential type other than basic and x509, whose body
// cannot be parsed).
func ParseKeyPackage(b []byte) (*KeyPackage, error) {
	kp, err := decodeKeyPackage(b)
	if err != nil {
		return nil, err
	}
	return kp, nil
}

// decodeKeyPackage is ParseKeyPackage. When the only fault is an
// unparseable credential (InvalidKeyPackage), it also returns the partly
// parsed KeyPackage, whose version and cipher suite are known, so that
// ValidateKeyPackage can report an unsupported cipher suite first.
func decodeKeyPackage(b []byte) (*KeyPackage, *Error) {
	m, err := decodeMessage(b, WireFormatKeyPackage, "key_package", looksLikeFramedKeyPackage, (*decoder).keyPackage, sameVersion)
	if err != nil && (m.body == nil || err.Code != CodeInvalidKeyPackage) {
		return nil, err
	}
	kp := m.body
	if m.framed && m.version != ProtocolMLS10 {
		return nil, unsupportedVersion("mls_message.version", 0, m.version)
	}
	if kp.Version != ProtocolMLS10 {
		return nil, unsupportedVersion("key_package.version", m.bodyOffset, kp.Version)
	}
	return kp, err
}

// sameVersion reports whether an MLSMessage's KeyPackage has the
// MLSMessage's version, as every real one does. Bytes that parse as both
// forms, a bare KeyPackage of cipher suite 5 being one such, are an
// MLSMessage only then: in a bare KeyPackage, the bytes where the framed
// KeyPackage's version would be start init_key.
func sameVersion(version uint16, kp *KeyPackage) bool { return kp.Version == version }

// looksLikeFramedKeyPackage reports whether b, which parses neither as an
// MLSMessage nor as a bare KeyPackage, looks like an MLSMessage: the
// KeyPackage version that would follow its header equals its version. In a
// bare KeyPackage those bytes are the length of init_key, which would have
// to be empty.
func looksLikeFramedKeyPackage(b []byte) bool {
	return len(b) >= 6 && binary.BigEndian.Uint16(b[4:]) == binary.BigEndian.Uint16(b)
}

func (d *decoder) keyPackage(kp *KeyPackage) {
	start := d.off
	kp.Version = d.uint16("key_package.version")
	kp.CipherSuite = CipherSuite(d.uint16("key_package.cipher_suite"))
	kp.InitKey = d.opaque("key_package.init_key")
	d.leafNode(&kp.LeafNode)
	kp.Extensions = d.extensions("key_package.extensions")
	tbsEnd := d.off
	kp.Signature = d.opaque("key_package.signature")
	if d.err == nil {
		kp.tbs = d.buf[start:tbsEnd:tbsEnd]
		kp.Raw = d.buf[start:d.off:d.off]
	}
}

func (d *decoder) leafNode(ln *LeafNode) {
	start := d.off
	ln.EncryptionKey = d.opaque("key_package.leaf_node.encryption_key")
	ln.SignatureKey = d.opaque("key_package.leaf_node.signature_key")
	d.credential(&ln.Credential)
	d.capabilities(&ln.Capabilities)
	sourceOffset := d.off
	ln.Source = d.uint8("key_package.leaf_node.leaf_node_source")
	switch {
	case d.err != nil:
		return
	case ln.Source == SourceKeyPackage:
		ln.Lifetime = &Lifetime{
			NotBefore: d.uint64("key_package.leaf_node.lifetime.not_before"),
			NotAfter:  d.uint64("key_package.leaf_node.lifetime.not_after"),
		}
	case ln.Source == SourceUpdate:
	case ln.Source == SourceCommit:
		ln.ParentHash = d.opaque("key_package.leaf_node.parent_hash")
	default:
		d.fail(CodeMalformed, "key_package.leaf_node.leaf_node_source", sourceOffset, "unknown leaf_node_source %d", ln.Source)
	}
	ln.Extensions = d.extensions("key_package.leaf_node.extensions")
	tbsEnd := d.off
	ln.Signature = d.opaque("key_package.leaf_node.signature")
	if d.err == nil {
		ln.tbs = d.buf[start:tbsEnd:tbsEnd]
	}
}

func (d *decoder) credential(c *Credential) {
	const field = "key_package.leaf_node.credential"
	start := d.off
	c.Type = d.uint16(field + ".credential_type")
	switch {
	case d.err != nil:
	case c.Type == CredentialBasic:
		c.Identity = d.opaque(field + ".identity")
	case c.Type == CredentialX509:
		d.vector(field+".certificates", func() {
			c.Certificates = append(c.Certificates, d.opaque(field+".certificates.cert_data"))
		})
	default:
		d.fail(CodeInvalidKeyPackage, field+".credential_type", start,
			"credential type 0x%04x is not supported (only basic and x509 are); its body cannot be parsed", c.Type)
	}
}

func (d *decoder) capabilities(c *Capabilities) {
	const field = "key_package.leaf_node.capabilities"
	c.Versions = d.uint16s(field + ".versions")
	c.CipherSuites = d.uint16s(field + ".cipher_suites")
	c.Extensions = d.uint16s(field + ".extensions")
	c.Proposals = d.uint16s(field + ".proposals")
	c.Credentials = d.uint16s(field + ".credentials")
}

func (d *decoder) extensions(field string) []Extension {
	var exts []Extension
	d.vector(field, func() {
		typ := d.uint16(field)
		data := d.opaque(field)
		exts = append(exts, Extension{Type: typ, Data: data})
	})
	return exts
}

// Ref returns the KeyPackageRef of kp with suite s (RFC 9420 section 5.2):
// RefHash("MLS 1.0 KeyPackage Reference", Raw) with the suite's hash. It
// returns nil when s has no usable hash (s should come from a Registry).
func (kp *KeyPackage) Ref(s Suite) []byte {
	return refHash(s.Hash, "MLS 1.0 KeyPackage Reference", kp.Raw)
}

// refHash is RFC 9420 RefHash: the hash of {opaque label<V>; opaque value<V>}.
func refHash(h crypto.Hash, label string, value []byte) []byte {
	if !h.Available() {
		return nil
	}
	var prefix [4]byte
	w := h.New()
	w.Write(appendVarint(prefix[:0], len(label)))
	w.Write([]byte(label))
	w.Write(appendVarint(prefix[:0], len(value)))
	w.Write(value)
	return w.Sum(nil)
}

// LastResort reports whether kp carries the last_resort KeyPackage
// extension (type 0x000a).
func (kp *KeyPackage) LastResort() bool {
	return slices.ContainsFunc(kp.Extensions, func(e Extension) bool { return e.Type == ExtensionLastResort })
}

// VerifySignatures verifies the LeafNode signature (label "LeafNodeTBS")
// and the KeyPackage signature (label "KeyPackageTBS") with the leaf's
// signature_key, using the signature algorithm of s. kp must come from
// ParseKeyPackage. It returns an *Error: BadSignature when a signature does
// not verify or the signature key is not a valid key of the algorithm;
// InvalidKeyPackage when the leaf's source is not key_package (such a leaf
// is signed over group data a KeyPackage does not carry);
// UnsupportedCipherSuite when s is not kp's suite.
func (kp *KeyPackage) VerifySignatures(s Suite) error {
	return asError(kp.verifySignatures(s, nil))
}

// verifySignatures verifies both signatures now or, when batch is not nil
// and the key is an Ed25519 key, adds them to batch for the caller to
// verify; everything else is checked now either way.
func (kp *KeyPackage) verifySignatures(s Suite, batch *ed25519Batch) *Error {
	switch {
	case s.ID != kp.CipherSuite:
		return errorf(CodeUnsupportedCipherSuite, "key_package.cipher_suite",
			"KeyPackage is of suite %d, not %d", kp.CipherSuite, s.ID)
	case kp.LeafNode.Source != SourceKeyPackage:
		return errorf(CodeInvalidKeyPackage, "key_package.leaf_node.leaf_node_source",
			"leaf_node_source is %d, want key_package (1)", kp.LeafNode.Source)
	case kp.tbs == nil || kp.LeafNode.tbs == nil:
		return errorf(CodeMalformed, "key_package", "KeyPackage was not produced by ParseKeyPackage")
	}
	k, err := batch.signatureKey(s, kp.LeafNode.SignatureKey)
	if err != nil {
		return err
	}
	if ek, ok := k.(*ed25519Key); ok && batch != nil {
		batch.add(ek, SignContent("LeafNodeTBS", kp.LeafNode.tbs), kp.LeafNode.Signature)
		batch.add(ek, SignContent("KeyPackageTBS", kp.tbs), kp.Signature)
		return nil
	}
	if err := verifyWithLabel(k, "key_package.leaf_node.signature", "LeafNodeTBS", kp.LeafNode.tbs, kp.LeafNode.Signature); err != nil {
		return err
	}
	return verifyWithLabel(k, "key_package.signature", "KeyPackageTBS", kp.tbs, kp.Signature)
}

// check applies the RFC 9420 rules for KeyPackages (sections 7.2, 7.3 and
// 10.1) that need no signature, clock or group: every failure is
// InvalidKeyPackage.
func (kp *KeyPackage) check() *Error {
	ln := &kp.LeafNode
	caps := &ln.Capabilities
	fail := func(field, format string, args ...any) *Error {
		return errorf(CodeInvalidKeyPackage, field, format, args...)
	}
	switch {
	case ln.Source != SourceKeyPackage:
		return fail("key_package.leaf_node.leaf_node_source", "leaf_node_source is %d, want key_package (1)", ln.Source)
	case bytes.Equal(ln.EncryptionKey, kp.InitKey):
		return fail("key_package.init_key", "init_key equals leaf_node.encryption_key")
	case hasDuplicateType(kp.Extensions):
		return fail("key_package.extensions", "duplicate extension type")
	case hasDuplicateType(ln.Extensions):
		return fail("key_package.leaf_node.extensions", "duplicate extension type")
	case slices.ContainsFunc(kp.Extensions, func(e Extension) bool { return e.Type == ExtensionLastResort && len(e.Data) > 0 }):
		return fail("key_package.extensions", "the last_resort extension (0x000a) has a body of its own; it must be empty")
	case !slices.Contains(caps.Credentials, ln.Credential.Type):
		return fail("key_package.leaf_node.capabilities.credentials",
			"credential type %d is not listed in the leaf's capabilities", ln.Credential.Type)
	case !slices.Contains(caps.Versions, kp.Version):
		return fail("key_package.leaf_node.capabilities.versions",
			"the KeyPackage's version %d is not listed in the leaf's capabilities", kp.Version)
	case ln.Credential.Type == CredentialX509 && len(ln.Credential.Certificates) == 0:
		return fail("key_package.leaf_node.credential.certificates", "x509 credential has no certificate")
	}
	if t, ok := misplacedExtension(ln.Extensions, extensionApplicationID); ok {
		return fail("key_package.leaf_node.extensions",
			"extension type 0x%04x is reserved or does not belong in a LeafNode", t)
	}
	if t, ok := misplacedExtension(kp.Extensions, 0); ok {
		return fail("key_package.extensions",
			"extension type 0x%04x is reserved or does not belong in a KeyPackage", t)
	}
	if t, ok := unlistedExtension(ln.Extensions, caps.Extensions); ok {
		return fail("key_package.leaf_node.extensions",
			"leaf extension type 0x%04x is not listed in the leaf's capabilities", t)
	}
	return nil
}

// hasDuplicateType reports whether two extensions share a type.
func hasDuplicateType(exts []Extension) bool {
	if len(exts) < 2 {
		return false
	}
	types := make([]uint16, len(exts))
	for i, e := range exts {
		types[i] = e.Type
	}
	slices.Sort(types)
	for i := 1; i < len(types); i++ {
		if types[i] == types[i-1] {
			return true
		}
	}
	return false
}

// maxDefaultExtension is the largest of the RFC 9420 "default" extension
// types (application_id 1 to external_senders 5), which capabilities never
// need to list.
const maxDefaultExtension = 5

// extensionApplicationID is the one default extension type that belongs
// in a LeafNode (RFC 9420 section 17.3's registry: ratchet_tree and
// external_pub belong in GroupInfo, required_capabilities and
// external_senders in GroupContext; 0 is reserved).
const extensionApplicationID = 0x0001

// misplacedExtension returns the first extension type of exts that is
// reserved (0) or a default type that the registry does not allow in a
// message of this kind (every default type but allowed, which may be 0
// for none).
func misplacedExtension(exts []Extension, allowed uint16) (uint16, bool) {
	for _, e := range exts {
		if e.Type <= maxDefaultExtension && (e.Type == 0 || e.Type != allowed) {
			return e.Type, true
		}
	}
	return 0, false
}

// unlistedExtension returns the first non-default extension type of exts
// that listed does not contain (RFC 9420 section 7.3).
func unlistedExtension(exts []Extension, listed []uint16) (uint16, bool) {
	if len(exts) == 0 {
		return 0, false
	}
	sorted := slices.Sorted(slices.Values(listed))
	for _, e := range exts {
		if e.Type <= maxDefaultExtension {
			continue
		}
		if _, found := slices.BinarySearch(sorted, e.Type); !found {
			return e.Type, true
		}
	}
	return 0, false
}
