package kpd

import "time"

// Event types (SPEC section 8). Events are written to a durable outbox in
// the same transaction as the change that causes them and delivered by
// webhook at least once.
const (
	// EventKeyPackagesLow: a device's available count of a suite fell to or
	// below the low watermark (once, not on every claim below it, until
	// the device publishes KeyPackages of that suite again).
	EventKeyPackagesLow = "key_packages.low"
	// EventKeyPackagesExhausted: a device has no available KeyPackage of a
	// suite left (its last resort, if any, is served from now on).
	EventKeyPackagesExhausted = "key_packages.exhausted"
	// EventLastResortServed: a claim handed out a device's last resort.
	EventLastResortServed = "last_resort.served"
	// EventLastResortUsed: a device acknowledged, took or rejected a
	// Welcome made with its last resort; it should publish a new one.
	EventLastResortUsed = "last_resort.used"
	// EventWelcomePending: a new Welcome awaits a device (hook it to push
	// notifications).
	EventWelcomePending = "welcome.pending"
)

// Event is one outbox entry. ID is stable across delivery attempts and
// restarts, so receivers can drop duplicates.
type Event struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	// Seq orders the outbox; events of one device are delivered in Seq
	// order.
	Seq         uint64    `json:"seq"`
	DID         string    `json:"did"`
	Device      string    `json:"device"`
	CipherSuite uint16    `json:"cipher_suite,omitempty"`
	Available   *int      `json:"available,omitempty"`
	Ref         Ref       `json:"ref,omitempty"`
	WelcomeID   string    `json:"welcome_id,omitempty"`
	ConvoID     string    `json:"convo_id,omitempty"`
	Sender      string    `json:"sender,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// SuiteStats counts the stored KeyPackages of one cipher suite by state.
type SuiteStats struct {
	CipherSuite uint16 `json:"cipher_suite"`
	Available   int64  `json:"available"`
	Claimed     int64  `json:"claimed"`
	Consumed    int64  `json:"consumed"`
	// LastResort counts available last-resort KeyPackages (not included
	// in Available).
	LastResort int64 `json:"last_resort"`
}

// Stats are store-wide totals, read from counters the store maintains in
// the same transactions as the changes (never by scanning).
type Stats struct {
	Suites  []SuiteStats `json:"suites"`
	Devices int64        `json:"devices"`
	// Deliveries counts Welcome deliveries by state.
	Deliveries map[DeliveryState]int64 `json:"deliveries"`
	Welcomes   int64                   `json:"welcomes"`
	// PoolSizes is the distribution of available regular KeyPackages per
	// (device, suite): PoolSizes[i] counts pools with at most
	// PoolSizeBounds[i] (and more than the previous bound); the last entry
	// counts larger pools.
	PoolSizes []int64 `json:"pool_sizes"`
	// PendingEvents counts undelivered outbox events.
	PendingEvents int64 `json:"pending_events"`
	SizeBytes     int64 `json:"db_size_bytes"`
}

// PoolSizeBounds are the upper bounds of Stats.PoolSizes' buckets.
var PoolSizeBounds = []int{0, 1, 2, 5, 10, 20, 50, 100, 200}
