package mls

import (
	"bytes"
	"time"
)

// Defaults of kpd's validation policy (SPEC section 3). Policy's zero value
// does not apply them: the caller sets them.
const (
	DefaultMaxLifetime = 90 * 24 * time.Hour
	DefaultClockSkew   = time.Hour
)

// Policy is what ValidateKeyPackage checks beyond RFC 9420 itself.
type Policy struct {
	// Now is the current time; zero means time.Now().
	Now time.Time
	// MaxLifetime rejects a not_after further than this from Now; 0 means
	// unlimited.
	MaxLifetime time.Duration
	// ClockSkew is how far in the future not_before may be.
	ClockSkew time.Duration
	// AllowX509 accepts x509 credentials. kpd cannot check that a
	// certificate names the DID, so with AllowX509 an x509 credential is
	// accepted without any identity check.
	AllowX509 bool
	// SkipIdentityCheck skips matching a basic credential's identity to the
	// DID (for test vectors whose identities are not DIDs). It does not
	// make x509 credentials acceptable.
	SkipIdentityCheck bool
}

// Validated is a KeyPackage that passed ValidateKeyPackage.
type Validated struct {
	KeyPackage *KeyPackage
	Suite      Suite
	// Ref is the KeyPackageRef computed with Suite's hash.
	Ref        []byte
	LastResort bool
	// NotBefore and NotAfter are the leaf's lifetime, in UTC, clamped to
	// 9999-12-31T23:59:59Z so that they always marshal to JSON (not_after is
	// often 2^64-1).
	NotBefore, NotAfter time.Time
}

// maxTime is the latest time that encoding/json and RFC 3339 can carry.
var maxTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// unixTime converts a lifetime bound to a time, clamped to maxTime.
func unixTime(sec uint64) time.Time {
	if sec > uint64(maxTime.Unix()) {
		return maxTime
	}
	return time.Unix(int64(sec), 0).UTC()
}

// ValidateKeyPackage parses b (an MLSMessage(mls_key_package) or a bare
// KeyPackage) and runs every check of kpd's SPEC section 3 except Conflict,
// which needs the store. It checks, and reports the first failure as an
// *Error with the code in brackets, in this order:
//
//   - exactly one well-formed KeyPackage [Malformed];
//   - version mls10, equal in the MLSMessage and the KeyPackage
//     [UnsupportedVersion];
//   - a cipher suite configured in r [UnsupportedCipherSuite];
//   - leaf_node_source key_package, encryption_key different from init_key,
//     no duplicate extension types (KeyPackage and LeafNode), an empty
//     last_resort extension body, the credential
//     type and the version listed in the leaf's capabilities, every
//     non-default leaf extension listed in them, a basic or x509 credential,
//     at least one certificate in an x509 one [InvalidKeyPackage]. (The
//     cipher suite is not required in the capabilities: the MLS working
//     group's vectors omit it.);
//   - the LeafNode and KeyPackage signatures [BadSignature];
//   - not_after not before p.Now, not_before at most p.ClockSkew after it,
//     not_before not after not_after, not_after at most p.MaxLifetime after
//     p.Now when that is set [LifetimeInvalid];
//   - the credential names did: a basic identity equal to did or starting
//     with did + "#" (unless p.SkipIdentityCheck); x509 only with
//     p.AllowX509 [IdentityMismatch].
func (r *Registry) ValidateKeyPackage(b []byte, did string, p Policy) (*Validated, error) {
	v, err := r.validateKeyPackage(b, did, p, nil)
	return v, asError(err)
}

// ValidateKeyPackages validates each KeyPackage of batch as
// ValidateKeyPackage does, with the same results and errors, in batch order
// (a nil error for a valid one). The Ed25519 signatures of the batch are
// verified together, which takes about half the CPU of verifying them one by
// one; if that fails, the KeyPackages that took part are validated one by
// one to say which are bad.
func (r *Registry) ValidateKeyPackages(batch [][]byte, did string, p Policy) ([]*Validated, []error) {
	vs := make([]*Validated, len(batch))
	errs := make([]error, len(batch))
	var sigs ed25519Batch
	var deferred []int // the KeyPackages whose signatures are in sigs
	one := func(i int) {
		v, err := r.validateKeyPackage(batch[i], did, p, nil)
		vs[i], errs[i] = v, asError(err)
	}
	for i, b := range batch {
		n := sigs.len()
		v, err := r.validateKeyPackage(b, did, p, &sigs)
		switch {
		case err == nil:
			vs[i] = v
			if sigs.len() > n {
				deferred = append(deferred, i)
			}
		case sigs.len() > n:
			// A check after the signatures failed; a bad signature is
			// reported before it, so check them now.
			sigs.truncate(n)
			one(i)
		default:
			errs[i] = err
		}
	}
	if !sigs.verify() {
		for _, i := range deferred {
			one(i)
		}
	}
	return vs, errs
}

// asError returns err as an error, nil when it is nil.
func asError(err *Error) error {
	if err == nil {
		return nil
	}
	return err
}

// validateKeyPackage is ValidateKeyPackage; with a batch, its Ed25519
// signature checks are added to batch instead of being done.
func (r *Registry) validateKeyPackage(b []byte, did string, p Policy, batch *ed25519Batch) (*Validated, *Error) {
	kp, parseErr := decodeKeyPackage(b)
	if kp == nil {
		return nil, parseErr
	}
	s, ok := r.Lookup(kp.CipherSuite)
	if !ok {
		return nil, unsupportedSuite(kp.CipherSuite, "key_package.cipher_suite")
	}
	if parseErr != nil {
		return nil, parseErr
	}
	if err := kp.check(); err != nil {
		return nil, err
	}
	if err := kp.verifySignatures(s, batch); err != nil {
		return nil, err
	}
	lt := kp.LeafNode.Lifetime
	if err := p.checkLifetime(lt); err != nil {
		return nil, err
	}
	if err := p.checkIdentity(kp.LeafNode.Credential, did); err != nil {
		return nil, err
	}
	return &Validated{
		KeyPackage: kp,
		Suite:      s,
		Ref:        kp.Ref(s),
		LastResort: kp.LastResort(),
		NotBefore:  unixTime(lt.NotBefore),
		NotAfter:   unixTime(lt.NotAfter),
	}, nil
}

func unsupportedSuite(id CipherSuite, field string) *Error {
	return errorf(CodeUnsupportedCipherSuite, field, "cipher suite %d (0x%04x) is not configured", id, uint16(id))
}

// checkLifetime applies the lifetime rules to a key_package leaf's lifetime.
func (p Policy) checkLifetime(lt *Lifetime) *Error {
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	nowSec := uint64(max(now.Unix(), 0))
	fail := func(field, format string, args ...any) *Error {
		return errorf(CodeLifetimeInvalid, "key_package.leaf_node.lifetime."+field, format, args...)
	}
	notBefore, notAfter := unixTime(lt.NotBefore).Format(time.RFC3339), unixTime(lt.NotAfter).Format(time.RFC3339)
	switch {
	case lt.NotBefore > lt.NotAfter:
		return fail("not_before", "not_before %s is after not_after %s", notBefore, notAfter)
	case lt.NotAfter < nowSec:
		return fail("not_after", "expired: not_after %s is in the past", notAfter)
	case lt.NotBefore > addSeconds(nowSec, p.ClockSkew):
		return fail("not_before", "not yet valid: not_before %s is more than %s in the future", notBefore, p.ClockSkew)
	case p.MaxLifetime > 0 && lt.NotAfter > addSeconds(nowSec, p.MaxLifetime):
		return fail("not_after", "not_after %s is more than the maximum lifetime %s from now", notAfter, p.MaxLifetime)
	}
	return nil
}

// addSeconds adds the whole seconds of a non-negative d to sec, saturating.
func addSeconds(sec uint64, d time.Duration) uint64 {
	add := uint64(max(d, 0) / time.Second)
	if sec+add < sec {
		return ^uint64(0)
	}
	return sec + add
}

// checkIdentity checks that the credential names did.
func (p Policy) checkIdentity(c Credential, did string) *Error {
	const field = "key_package.leaf_node.credential"
	if c.Type == CredentialX509 {
		if !p.AllowX509 {
			return errorf(CodeIdentityMismatch, field, "x509 credentials are not accepted")
		}
		return nil
	}
	if p.SkipIdentityCheck {
		return nil
	}
	id := c.Identity
	if did == "" || !(string(id) == did || bytes.HasPrefix(id, []byte(did+"#"))) {
		return errorf(CodeIdentityMismatch, field+".identity", "the credential's identity is not %q or %q", did, did+"#…")
	}
	return nil
}
