package kpd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"
)

// Store keeps KeyPackages, Welcomes, deliveries and tokens. Every method is
// one atomic transaction. did arguments are authenticated callers; device
// arguments name one of that DID's devices. Methods return *Error values with
// the codes named in their comments; anything else is internal.
type Store interface {
	// Publish stores a batch of validated KeyPackages for a device, creating
	// the device if needed. Re-publishing a ref the device already has is
	// a no-op reported as PublishDuplicate. A ref stored for another DID (or
	// another device) fails the whole batch with Conflict (per-item errors
	// in Items). Over the per-device quotas: QuotaExceeded. A new last
	// resort retires the device's previous one of that suite.
	Publish(ctx context.Context, did, device string, kps []KeyPackage) ([]PublishResult, *Inventory, error)

	// StoredElsewhere reports, without writing, which refs are stored for
	// another DID or device than did's device: the Conflict items (Index
	// is the position in refs) a Publish of them would fail with. It lets
	// a batch refused for invalid items report its conflicts too.
	StoredElsewhere(ctx context.Context, did, device string, refs []Ref) ([]ItemError, error)

	// Inventory returns a device's counts and, with list, every KeyPackage
	// it has (available, claimed, consumed). NotFound for an unknown device.
	Inventory(ctx context.Context, did, device string, list bool) (*Inventory, []KeyPackageInfo, error)

	// DeleteKeyPackages deletes the listed available KeyPackages of the
	// device (refs == nil: all available ones, last resorts included).
	// Claimed and consumed ones, and refs of other devices, are left alone.
	DeleteKeyPackages(ctx context.Context, did, device string, refs []Ref) (int, *Inventory, error)

	// Sync deletes the device's available KeyPackages not in keep and
	// reports listed refs it does not have and claimed ones still pending.
	Sync(ctx context.Context, did, device string, keep []Ref) (*SyncResult, error)

	// Devices lists the DID's devices.
	Devices(ctx context.Context, did string) ([]DeviceInfo, error)

	// DeleteDevice removes a device, its KeyPackages (claimed ones too) and
	// all its deliveries, pending and finished (its senders' Welcome
	// statuses keep it, a pending one shown expired). NotFound for an
	// unknown device.
	DeleteDevice(ctx context.Context, did, device string) error

	// Claim hands out one KeyPackage per target device, oldest published
	// first, the last resort only when none is left; never an expired one.
	// With AllOrNothing and anything missing it claims nothing and fails
	// with Conflict carrying Missing.
	Claim(ctx context.Context, req ClaimRequest) (*ClaimResult, error)

	// PostWelcome routes a Welcome to the devices whose KeyPackages it names.
	// Each ref must be claimed by the sender (or be a last resort). When no
	// ref routes, nothing is stored and the result has no Recipients.
	// Posting the same Welcome again returns the stored result with Created
	// false; the same Welcome from another sender, or with another
	// ConvoID, is a Conflict.
	PostWelcome(ctx context.Context, w Welcome) (*PostWelcomeResult, error)

	// WelcomeStatus returns a Welcome's delivery status to its sender.
	// NotFound when the Welcome does not exist or sender did not post it.
	WelcomeStatus(ctx context.Context, sender, welcomeID string) (*WelcomeStatus, error)

	// PendingWelcomes lists the device's pending Welcomes, oldest first.
	PendingWelcomes(ctx context.Context, did, device string, opts ListWelcomesOptions) ([]PendingWelcome, error)

	// Ack marks the device's delivery of a Welcome acked and consumes its
	// KeyPackage (a last resort stays available), in one transaction.
	// Idempotent. NotFound for no such delivery; Conflict if it was
	// rejected or expired.
	Ack(ctx context.Context, did, device, welcomeID string) (*AckResult, error)

	// Reject marks the device's delivery rejected with a reason and
	// consumes its KeyPackage. Idempotent for the same state. NotFound for
	// no such delivery; Conflict if it was acked or expired.
	Reject(ctx context.Context, did, device, welcomeID string, reason Code, detail string) (*AckResult, error)

	// Take returns the device's oldest pending Welcome (of convoID, if
	// set) and acks it in the same transaction. NotFound if there is none.
	Take(ctx context.Context, did, device, convoID string) (*PendingWelcome, *AckResult, error)

	// PutToken stores an API token (by its hash).
	PutToken(ctx context.Context, t Token) error
	// TokenDID returns the DID of the token with this SHA-256 hash.
	// Unauthorized if there is none.
	TokenDID(ctx context.Context, hash []byte) (string, error)
	// Tokens lists the stored tokens, of one DID or (did == "") all.
	Tokens(ctx context.Context, did string) ([]Token, error)
	// RevokeToken deletes the token with this ID. NotFound if none.
	RevokeToken(ctx context.Context, id string) error
}

// Clock returns the current time. A nil Clock means time.Now.
type Clock func() time.Time

// Now returns c's time, or time.Now's when c is nil.
func (c Clock) Now() time.Time {
	if c == nil {
		return time.Now()
	}
	return c()
}

// WelcomeID returns the welcome_id of a Welcome: the first 16 bytes of the
// SHA-256 of its bare bytes (without an MLSMessage header), as hex. Posting
// the same Welcome twice therefore yields the same id.
func WelcomeID(bareWelcome []byte) string {
	sum := sha256.Sum256(bareWelcome)
	return hex.EncodeToString(sum[:16])
}

// Limits on names.
const (
	MaxDIDLength     = 2048
	MaxDeviceLength  = 64
	MaxConvoIDLength = 256
)

// ValidDID reports whether s has DID syntax did:<method>:<id> of at most
// MaxDIDLength bytes: method of lowercase letters and digits; id of
// [A-Za-z0-9._:%-], not ending in ':'.
func ValidDID(s string) bool {
	if len(s) > MaxDIDLength || !strings.HasPrefix(s, "did:") {
		return false
	}
	rest := s[4:]
	i := strings.IndexByte(rest, ':')
	if i <= 0 {
		return false
	}
	for _, c := range []byte(rest[:i]) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	id := rest[i+1:]
	if id == "" || id[len(id)-1] == ':' {
		return false
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '%' || c == '-') {
			return false
		}
	}
	return true
}

// ValidDevice reports whether s is a device name: 1-64 characters of
// [A-Za-z0-9._~-], but not "." or "..". SPEC section 2 allows those two,
// but a device name is a path segment, and HTTP clients, proxies and
// routers remove dot segments (RFC 3986 section 5.2.4) before a request
// reaches kpd: such a device could never be addressed.
func ValidDevice(s string) bool {
	if len(s) == 0 || len(s) > MaxDeviceLength || s == "." || s == ".." {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == '~' || c == '-') {
			return false
		}
	}
	return true
}

// ValidConvoID reports whether s is 1-256 printable ASCII characters.
func ValidConvoID(s string) bool {
	if len(s) == 0 || len(s) > MaxConvoIDLength {
		return false
	}
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}
