package kpd

import (
	"errors"
	"fmt"
)

// Code is a stable, machine-readable error code. Clients match on it; the
// HTTP layer maps each code to one status (see httpapi.StatusOf) and sends it
// as the "code" member of an RFC 9457 problem document.
type Code string

// Validation codes of SPEC section 3. They equal the mls package's codes.
const (
	CodeMalformed              Code = "Malformed"
	CodeUnsupportedVersion     Code = "UnsupportedVersion"
	CodeUnsupportedCipherSuite Code = "UnsupportedCipherSuite"
	CodeInvalidKeyPackage      Code = "InvalidKeyPackage"
	CodeBadSignature           Code = "BadSignature"
	CodeLifetimeInvalid        Code = "LifetimeInvalid"
	CodeIdentityMismatch       Code = "IdentityMismatch"
	CodeConflict               Code = "Conflict"
)

// General codes of SPEC section 5.
const (
	CodeUnauthorized    Code = "Unauthorized"
	CodeForbidden       Code = "Forbidden"
	CodeNotFound        Code = "NotFound"
	CodeBadRequest      Code = "BadRequest"
	CodePayloadTooLarge Code = "PayloadTooLarge"
	CodeQuotaExceeded   Code = "QuotaExceeded"
	CodeRateLimited     Code = "RateLimited"
	CodeUnavailable     Code = "Unavailable"
	CodeInternal        Code = "Internal"
)

// Reasons a Welcome's KeyPackageRef is rejected when the Welcome is posted.
const (
	CodeUnknownKeyPackage  Code = "UnknownKeyPackage"
	CodeNotClaimedByCaller Code = "NotClaimedByCaller"
	CodeAlreadyConsumed    Code = "AlreadyConsumed"
	CodeSuiteMismatch      Code = "SuiteMismatch"
)

// Reasons a claim target got no KeyPackage.
const (
	// CodeNoKeyPackages: the DID or device is unknown, or has never had a
	// KeyPackage of the suite (and no last resort).
	CodeNoKeyPackages Code = "NoKeyPackages"
	// CodeExhausted: the device has had KeyPackages of the suite but none is
	// available now and it has no last resort.
	CodeExhausted Code = "Exhausted"
)

// Reasons a device gives when it rejects a Welcome.
const (
	ReasonNoMatchingKeyPackage Code = "NoMatchingKeyPackage"
	ReasonInvalidWelcome       Code = "InvalidWelcome"
	ReasonOther                Code = "Other"
)

// ItemError reports one invalid item of a batch request, by its index in the
// request.
type ItemError struct {
	Index  int    `json:"index" cbor:"index"`
	Code   Code   `json:"code" cbor:"code"`
	Detail string `json:"detail" cbor:"detail"`
}

// Error is kpd's domain error: a stable Code and a human-readable message.
// Items carries per-item errors of a batch; Missing the unfilled targets of
// an all_or_nothing claim. Errors without a Code are internal.
type Error struct {
	Code    Code
	Message string
	Items   []ItemError
	Missing []Missing
	// Reason refines an authentication failure with the check that failed
	// (e.g. "Expired", "WrongAudience"), or a 404 of admin routes that are
	// off ("AdminRoutesOff"); clients see it as the problem's "reason"
	// member.
	Reason string
	// RetryAfter, in seconds, for RateLimited and Unavailable errors.
	RetryAfter int
	// Limit names the size or count limit (SPEC section 7) that a
	// PayloadTooLarge or QuotaExceeded error breached, one of the Limit
	// constants; clients see it as the problem's "limit" member, and it
	// labels the limit_exceeded_total metric.
	Limit string
}

// The size and count limits of SPEC section 7, as Error.Limit names them
// (rate limits are named by package ratelimit).
const (
	LimitBodySize          = "body_size"
	LimitKeyPackageSize    = "key_package_size"
	LimitWelcomeSize       = "welcome_size"
	LimitWelcomeMembers    = "welcome_members"
	LimitPublishBatch      = "publish_batch"
	LimitClaimTargets      = "claim_targets"
	LimitClaimDevices      = "claim_devices"
	LimitRefsPerRequest    = "refs_per_request"
	LimitBodyValues        = "body_values"
	LimitAvailablePerSuite = "available_per_suite"
	LimitDevicesPerDID     = "devices_per_did"
)

// Limits are every Limit constant.
var Limits = []string{LimitBodySize, LimitKeyPackageSize, LimitWelcomeSize, LimitWelcomeMembers, LimitPublishBatch,
	LimitClaimTargets, LimitClaimDevices, LimitRefsPerRequest, LimitBodyValues, LimitAvailablePerSuite, LimitDevicesPerDID}

// Error implements the error interface.
func (e *Error) Error() string {
	if e.Message == "" {
		return string(e.Code)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of err, or CodeInternal when err carries none.
// It returns "" for a nil error.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) {
		return Code(c.ErrorCode())
	}
	return CodeInternal
}

// ErrorMessage returns the human-readable message of err; for internal errors
// it returns "internal error" so that nothing internal leaks to clients.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	var c interface{ ErrorCode() string }
	if errors.As(err, &c) {
		return err.Error()
	}
	return "internal error"
}
