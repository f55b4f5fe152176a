package mls

import "fmt"

// Code is a stable reason code. The values equal the reason names of kpd's
// SPEC section 3, so callers can pass them on unchanged.
type Code string

// Reason codes, in the order ValidateKeyPackage checks them.
const (
	// CodeMalformed: not exactly one well-formed structure (truncated,
	// trailing bytes, non-minimal or invalid variable-length integers,
	// optional presence bytes other than 0 or 1, a wrong wire_format).
	CodeMalformed Code = "Malformed"
	// CodeUnsupportedVersion: a protocol version other than mls10, or an
	// MLSMessage version that differs from the KeyPackage's.
	CodeUnsupportedVersion Code = "UnsupportedVersion"
	// CodeUnsupportedCipherSuite: a cipher suite the Registry does not know.
	CodeUnsupportedCipherSuite Code = "UnsupportedCipherSuite"
	// CodeInvalidKeyPackage: well formed, but violating an RFC 9420 rule
	// for KeyPackages (see ValidateKeyPackage).
	CodeInvalidKeyPackage Code = "InvalidKeyPackage"
	// CodeBadSignature: a signature, or the signature key, does not verify.
	CodeBadSignature Code = "BadSignature"
	// CodeLifetimeInvalid: the lifetime has ended, has not started (beyond
	// the clock-skew allowance), or is longer than the policy allows.
	CodeLifetimeInvalid Code = "LifetimeInvalid"
	// CodeIdentityMismatch: the credential does not name the expected DID.
	CodeIdentityMismatch Code = "IdentityMismatch"
)

// Error is the error type of every parse and validation failure of this
// package: a Code, the RFC 9420 field at fault (dotted path, e.g.
// "key_package.leaf_node.credential"), the byte offset in the input where the
// fault was found (-1 when not applicable) and a human-readable message. The
// message never contains key material or message bytes.
type Error struct {
	Code   Code
	Field  string
	Offset int
	Msg    string
}

// Error formats the error as "Code: field: message (at byte N)".
func (e *Error) Error() string {
	s := string(e.Code)
	if e.Field != "" {
		s += ": " + e.Field
	}
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	if e.Offset >= 0 {
		s += fmt.Sprintf(" (at byte %d)", e.Offset)
	}
	return s
}

// ErrorCode returns string(e.Code). kpd.ErrorCode uses it to carry the
// code through to clients.
func (e *Error) ErrorCode() string { return string(e.Code) }

// errorf returns an *Error that is not tied to a byte offset.
func errorf(code Code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Offset: -1, Msg: fmt.Sprintf(format, args...)}
}
