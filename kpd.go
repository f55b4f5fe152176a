// Package kpd is the domain of kpd, a directory of MLS (RFC 9420)
// KeyPackages and Welcome messages: the records it keeps, their states, the
// error codes, and the Store interface that the storage adapters implement.
//
// Every KeyPackage is its own record keyed by its RFC 9420 KeyPackageRef,
// which kpd computes itself. A KeyPackage is available until it is claimed
// (handed out at most once), and consumed when the device that published it
// acknowledges the Welcome made with it. Last-resort KeyPackages stay
// available and are never consumed.
package kpd

import (
	"encoding/hex"
	"time"
)

// Ref is a KeyPackageRef (RFC 9420 section 5.2) as lowercase hex.
type Ref string

// RefOf returns the Ref of raw KeyPackageRef bytes.
func RefOf(b []byte) Ref { return Ref(hex.EncodeToString(b)) }

// Bytes decodes r; it returns an error if r is not hex.
func (r Ref) Bytes() ([]byte, error) { return hex.DecodeString(string(r)) }

// KeyPackageState is the state of a stored KeyPackage.
type KeyPackageState string

// KeyPackage states (SPEC section 4).
const (
	StateAvailable KeyPackageState = "available"
	StateClaimed   KeyPackageState = "claimed"
	StateConsumed  KeyPackageState = "consumed"
)

// DeliveryState is the state of one Welcome's delivery to one device.
type DeliveryState string

// Delivery states (SPEC section 4).
const (
	DeliveryPending  DeliveryState = "pending"
	DeliveryAcked    DeliveryState = "acked"
	DeliveryRejected DeliveryState = "rejected"
	DeliveryExpired  DeliveryState = "expired"
)

// PublishStatus says what publishing one KeyPackage did.
type PublishStatus string

// Publish outcomes.
const (
	PublishStored    PublishStatus = "stored"
	PublishDuplicate PublishStatus = "duplicate"
)

// KeyPackage is a validated KeyPackage as the store receives it for
// publishing. The caller (the HTTP layer) has parsed and verified Data with
// the mls package and computed Ref itself.
type KeyPackage struct {
	Ref         Ref
	DID         string
	Device      string
	CipherSuite uint16
	// Data is the KeyPackage exactly as the client sent it (an MLSMessage
	// or a bare KeyPackage).
	Data       []byte
	LastResort bool
	NotBefore  time.Time
	NotAfter   time.Time
}

// PublishResult is the outcome of publishing one KeyPackage of a batch.
type PublishResult struct {
	Ref         Ref           `json:"ref"`
	CipherSuite uint16        `json:"cipher_suite"`
	Status      PublishStatus `json:"status"`
	LastResort  bool          `json:"last_resort"`
	NotAfter    time.Time     `json:"not_after"`
}

// LastResortInfo describes a device's last-resort KeyPackage of one suite.
type LastResortInfo struct {
	Ref      Ref       `json:"ref"`
	NotAfter time.Time `json:"not_after"`
	// Served counts how often it was handed out by a claim.
	Served int64 `json:"served"`
}

// SuiteInventory counts one device's KeyPackages of one cipher suite.
type SuiteInventory struct {
	CipherSuite uint16          `json:"cipher_suite"`
	Available   int             `json:"available"`
	Claimed     int             `json:"claimed"`
	LastResort  *LastResortInfo `json:"last_resort"`
}

// Inventory is a device's KeyPackage inventory. Available counts exclude
// the last resort.
type Inventory struct {
	Device       string           `json:"device"`
	Suites       []SuiteInventory `json:"suites"`
	LowWatermark int              `json:"low_watermark"`
}

// KeyPackageInfo is the metadata of one stored KeyPackage, for listings.
type KeyPackageInfo struct {
	Ref         Ref             `json:"ref"`
	CipherSuite uint16          `json:"cipher_suite"`
	State       KeyPackageState `json:"state"`
	LastResort  bool            `json:"last_resort"`
	PublishedAt time.Time       `json:"published_at"`
	NotAfter    time.Time       `json:"not_after"`
	ClaimedAt   *time.Time      `json:"claimed_at"`
}

// SyncResult is the outcome of a device's sync.
type SyncResult struct {
	// Deleted are the device's available KeyPackages that were not listed.
	Deleted []Ref `json:"deleted"`
	// Unknown are listed refs the server does not have (any more) for the
	// device: the device may drop their private keys.
	Unknown []Ref `json:"unknown"`
	// Pending are claimed KeyPackages still awaiting a Welcome: the device
	// must keep their private keys.
	Pending   []Ref      `json:"pending"`
	Inventory *Inventory `json:"inventory"`
}

// DeviceInfo describes one device of a DID.
type DeviceInfo struct {
	Device          string           `json:"device"`
	Suites          []SuiteInventory `json:"suites"`
	PendingWelcomes int              `json:"pending_welcomes"`
	// LastSeen is the time of the device's last state-changing request.
	LastSeen time.Time `json:"last_seen"`
}

// ClaimTarget names a DID and, optionally, some of its devices. Without
// Devices, every device of the DID is a target.
type ClaimTarget struct {
	DID     string   `json:"did"`
	Devices []string `json:"devices,omitempty"`
}

// ClaimRequest asks for one KeyPackage per target device.
type ClaimRequest struct {
	// Claimer is the authenticated caller.
	Claimer     string
	CipherSuite uint16
	Targets     []ClaimTarget
	// ExcludeDevices names devices of the claimer's own DID that are not
	// targets (typically the claiming device itself).
	ExcludeDevices []string
	// AllOrNothing: if any target device gets nothing, claim nothing.
	AllOrNothing bool
}

// ClaimedKeyPackage is one KeyPackage handed out by a claim.
type ClaimedKeyPackage struct {
	DID         string `json:"did"`
	Device      string `json:"device"`
	Ref         Ref    `json:"ref"`
	CipherSuite uint16 `json:"cipher_suite"`
	KeyPackage  []byte `json:"key_package"`
	LastResort  bool   `json:"last_resort"`
}

// Missing is a target (a DID, or one device of it) that got no KeyPackage.
type Missing struct {
	DID    string `json:"did"`
	Device string `json:"device,omitempty"`
	// Reason is CodeNoKeyPackages or CodeExhausted.
	Reason Code `json:"reason"`
}

// ClaimResult is the outcome of a claim.
type ClaimResult struct {
	KeyPackages []ClaimedKeyPackage `json:"key_packages"`
	Missing     []Missing           `json:"missing"`
}

// Welcome is a parsed Welcome message as the store receives it.
type Welcome struct {
	// ID is the welcome_id: WelcomeID of the bare Welcome bytes.
	ID      string
	ConvoID string
	// Sender is the authenticated DID that posted it.
	Sender      string
	CipherSuite uint16
	// Data is the Welcome exactly as the sender posted it.
	Data []byte
	// Refs are the new_member KeyPackageRefs of its EncryptedGroupSecrets.
	Refs []Ref
}

// Recipient is one routed new_member of a Welcome.
type Recipient struct {
	DID       string        `json:"did"`
	Device    string        `json:"device"`
	Ref       Ref           `json:"ref"`
	Status    DeliveryState `json:"status"`
	Reason    Code          `json:"reason,omitempty"`
	Detail    string        `json:"detail,omitempty"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// RejectedRef is a new_member ref of a posted Welcome that was not routed.
type RejectedRef struct {
	Ref Ref `json:"ref"`
	// Reason is one of CodeUnknownKeyPackage, CodeNotClaimedByCaller,
	// CodeAlreadyConsumed, CodeSuiteMismatch.
	Reason Code `json:"reason"`
}

// PostWelcomeResult is the outcome of posting a Welcome. When Recipients is
// empty nothing was stored.
type PostWelcomeResult struct {
	WelcomeID  string        `json:"welcome_id"`
	Recipients []Recipient   `json:"recipients"`
	Rejected   []RejectedRef `json:"rejected"`
	// Created is false when the same Welcome had been posted before by the
	// same sender; the result is then the stored one.
	Created bool `json:"-"`
}

// WelcomeStatus is what the sender of a Welcome sees of its delivery.
type WelcomeStatus struct {
	WelcomeID  string      `json:"welcome_id"`
	ConvoID    string      `json:"convo_id"`
	CreatedAt  time.Time   `json:"created_at"`
	Recipients []Recipient `json:"recipients"`
}

// PendingWelcome is a Welcome awaiting a device's acknowledgement.
type PendingWelcome struct {
	WelcomeID   string    `json:"welcome_id"`
	ConvoID     string    `json:"convo_id"`
	Sender      string    `json:"sender"`
	Ref         Ref       `json:"ref"`
	CipherSuite uint16    `json:"cipher_suite"`
	Welcome     []byte    `json:"welcome"`
	CreatedAt   time.Time `json:"created_at"`
}

// ListWelcomesOptions filters a device's pending Welcomes.
type ListWelcomesOptions struct {
	// ConvoID, when set, keeps only Welcomes of that conversation.
	ConvoID string
	// Limit caps the number returned; 0 means the store's default.
	Limit int
}

// AckResult is the outcome of acknowledging (or rejecting) a Welcome.
type AckResult struct {
	Ref        Ref       `json:"ref"`
	ConsumedAt time.Time `json:"consumed_at"`
}

// Token is an API token's stored form: only its SHA-256 is kept.
type Token struct {
	// ID is a short public identifier (hex of the first 8 bytes of Hash).
	ID        string    `json:"id"`
	Hash      []byte    `json:"-"`
	DID       string    `json:"did"`
	Label     string    `json:"label,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}
