package mls

import "fmt"

// Welcome is a parsed RFC 9420 Welcome (section 12.4.3.1). Its byte fields
// are sub-slices of the input given to ParseWelcome, which must not be
// modified while the Welcome is in use. kpd never decrypts a Welcome: it
// only reads the new_member KeyPackageRefs to route it.
type Welcome struct {
	CipherSuite        CipherSuite
	Secrets            []EncryptedGroupSecrets
	EncryptedGroupInfo []byte
	// Raw is the bare Welcome bytes (without any MLSMessage header).
	Raw []byte
}

// EncryptedGroupSecrets is the GroupSecrets of one new member, encrypted
// to the init_key of the KeyPackage that NewMember names.
type EncryptedGroupSecrets struct {
	// NewMember is the KeyPackageRef of the new member's KeyPackage.
	NewMember []byte
	// KEMOutput and Ciphertext form the HPKECiphertext.
	KEMOutput, Ciphertext []byte
}

// ParseWelcome parses one Welcome from b, which is either an MLSMessage with
// wire_format mls_welcome or a bare Welcome. When the second uint16 of b is 3
// (mls_welcome), b is an MLSMessage if it parses as one; otherwise it is
// parsed as a bare Welcome. When neither parses, b is taken for an
// MLSMessage if its third byte is 0 (in a bare Welcome, the start of an
// empty secrets vector): the error is then that of the MLSMessage form, or
// a wrong wire_format.
//
// A Welcome must name at least one new member, and each new_member must be
// 32, 48 or 64 bytes long: the size of a KeyPackageRef with any hash a Suite
// can have. (That also keeps what the parser allocates for a large Welcome
// within a small multiple of its size.)
//
// Errors are *Error with code Malformed (bad syntax, trailing bytes,
// non-minimal lengths, no new member, a new_member of another size) or
// UnsupportedVersion (an MLSMessage version other than mls10). ParseWelcome
// does not check that the cipher suite is configured: see
// Registry.ValidateWelcome.
func ParseWelcome(b []byte) (*Welcome, error) {
	w, err := decodeWelcome(b)
	if err != nil {
		return nil, err
	}
	return w, nil
}

func decodeWelcome(b []byte) (*Welcome, *Error) {
	m, err := decodeMessage(b, WireFormatWelcome, "welcome", looksLikeFramedWelcome, (*decoder).welcome, nil)
	if err != nil {
		return nil, err
	}
	if m.framed && m.version != ProtocolMLS10 {
		return nil, unsupportedVersion("mls_message.version", 0, m.version)
	}
	return m.body, nil
}

// looksLikeFramedWelcome reports whether b, which parses neither as an
// MLSMessage nor as a bare Welcome, looks like an MLSMessage: its third byte
// is 0, the high byte of the wire format. In a bare Welcome that byte starts
// the length of secrets, which would be empty.
func looksLikeFramedWelcome(b []byte) bool {
	return len(b) >= 4 && b[2] == 0
}

func (d *decoder) welcome(w *Welcome) {
	start := d.off
	w.CipherSuite = CipherSuite(d.uint16("welcome.cipher_suite"))
	secretsOffset := d.off
	d.vector("welcome.secrets", func() {
		var s EncryptedGroupSecrets
		refOffset := d.off
		s.NewMember = d.opaque("welcome.secrets.new_member")
		if n := len(s.NewMember); d.err == nil && n != 32 && n != 48 && n != 64 {
			d.fail(CodeMalformed, "welcome.secrets.new_member", refOffset,
				"a KeyPackageRef of %d bytes (want 32, 48 or 64: a SHA-256, SHA-384 or SHA-512 hash)", n)
		}
		s.KEMOutput = d.opaque("welcome.secrets.encrypted_group_secrets.kem_output")
		s.Ciphertext = d.opaque("welcome.secrets.encrypted_group_secrets.ciphertext")
		w.Secrets = append(w.Secrets, s)
	})
	if d.err == nil && len(w.Secrets) == 0 {
		d.fail(CodeMalformed, "welcome.secrets", secretsOffset, "a Welcome must name at least one new member")
	}
	w.EncryptedGroupInfo = d.opaque("welcome.encrypted_group_info")
	if d.err == nil {
		w.Raw = d.buf[start:d.off:d.off]
	}
}

// NewMembers returns the new_member KeyPackageRefs of w, in order.
func (w *Welcome) NewMembers() [][]byte {
	refs := make([][]byte, len(w.Secrets))
	for i, s := range w.Secrets {
		refs[i] = s.NewMember
	}
	return refs
}

// ValidateWelcome parses b like ParseWelcome and checks that its cipher
// suite is configured, returning the suite, and that every new_member is a
// KeyPackageRef of that suite: as long as its hash (Malformed otherwise: no
// KeyPackage of the suite can have it). Errors are *Error with code
// Malformed, UnsupportedVersion or UnsupportedCipherSuite.
func (r *Registry) ValidateWelcome(b []byte) (*Welcome, Suite, error) {
	w, err := decodeWelcome(b)
	if err != nil {
		return nil, Suite{}, err
	}
	s, ok := r.Lookup(w.CipherSuite)
	if !ok {
		return nil, Suite{}, unsupportedSuite(w.CipherSuite, "welcome.cipher_suite")
	}
	for i, sec := range w.Secrets {
		if len(sec.NewMember) != s.Hash.Size() {
			return nil, Suite{}, asError(errorf(CodeMalformed, fmt.Sprintf("welcome.secrets[%d].new_member", i),
				"a KeyPackageRef of %d bytes; suite %d's hash gives %d", len(sec.NewMember), s.ID, s.Hash.Size()))
		}
	}
	return w, s, nil
}
