package kv

import (
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// stamp is a time stored exactly, for every time.Time (including lifetimes
// far beyond what Unix nanoseconds can hold): [seconds, nanoseconds].
type stamp struct {
	_    struct{} `cbor:",toarray"`
	Sec  int64
	Nsec int64
}

func stampOf(t time.Time) stamp { return stamp{Sec: t.Unix(), Nsec: int64(t.Nanosecond())} }

// time returns s in UTC.
func (s stamp) time() time.Time { return time.Unix(s.Sec, s.Nsec).UTC() }

// optTime returns the time of an optional stamp, the zero time for nil.
func optTime(s *stamp) time.Time {
	if s == nil {
		return time.Time{}
	}
	return s.time()
}

// kpRecord is a stored KeyPackage, keyed by index.KeyPackage(DID, device,
// suite, seq) (see key), which never changes while the record exists.
// Which indexes it belongs to follows from its fields alone (see
// indexEntries).
type kpRecord struct {
	DID        string              `cbor:"1,keyasint"`
	Device     string              `cbor:"2,keyasint"`
	Suite      uint16              `cbor:"3,keyasint"`
	State      kpd.KeyPackageState `cbor:"4,keyasint"`
	Data       []byte              `cbor:"5,keyasint,omitempty"` // dropped once consumed
	LastResort bool                `cbor:"6,keyasint,omitempty"`
	// Retired marks a last resort replaced (or deleted by its owner) while
	// deliveries naming it were pending: it is no longer served and leaves
	// when its last pending delivery finishes.
	Retired     bool   `cbor:"7,keyasint,omitempty"`
	PublishedAt stamp  `cbor:"8,keyasint"`
	NotBefore   stamp  `cbor:"9,keyasint"`
	NotAfter    stamp  `cbor:"10,keyasint"`
	Claimer     string `cbor:"11,keyasint,omitempty"`
	ClaimedAt   *stamp `cbor:"12,keyasint,omitempty"`
	ConsumedAt  *stamp `cbor:"13,keyasint,omitempty"`
	// Served counts the claims that handed out this last resort.
	Served int64 `cbor:"14,keyasint,omitempty"`
	// Seq is the publish sequence, the last part of the record's key: the
	// order of the device's FIFO pool.
	Seq uint64 `cbor:"15,keyasint"`
	// Welcome is the Welcome a regular KeyPackage was routed by.
	Welcome string `cbor:"16,keyasint,omitempty"`
	// Pending counts the pending deliveries that name this KeyPackage.
	Pending int `cbor:"17,keyasint,omitempty"`
	// Lapsed marks a KeyPackage that the sweeper found past its
	// not_after while it was claimed, consumed or retired (an available
	// one is deleted instead): it has left the expiry index.
	Lapsed bool `cbor:"18,keyasint,omitempty"`
	// Ref is the raw KeyPackageRef (schema 4: before, it was the key).
	Ref []byte `cbor:"19,keyasint,omitempty"`
	// Spent marks a claimed or consumed KeyPackage past its retention
	// whose not_after has not passed yet: it is gone for every purpose
	// (no counters, no claimed or consumed index, no listing, no Welcome
	// routes to it) but its ref, so that the owner's client re-publishing
	// the same bytes gets "duplicate" instead of a new KeyPackage that
	// would be handed out a second time. Its bytes are dropped; the
	// expiry sweep deletes it at not_after.
	Spent bool `cbor:"20,keyasint,omitempty"`
}

// key returns the record's key in the kps bucket.
func (r *kpRecord) key() []byte { return index.KeyPackage(r.DID, r.Device, r.Suite, r.Seq) }

// suiteCounts are a device's counters for one cipher suite, of regular
// KeyPackages only, and where its pool starts. A device has an entry for
// every suite it ever had a KeyPackage of, which is how a claim tells
// Exhausted from NoKeyPackages.
type suiteCounts struct {
	Available int `cbor:"1,keyasint,omitempty"`
	Claimed   int `cbor:"2,keyasint,omitempty"`
	// Head bounds the pool from below: no available regular KeyPackage of
	// the suite has a seq below it, so a claim seeks it rather than
	// stepping over the claimed and consumed KeyPackages before it. Claims
	// raise it; new KeyPackages get larger seqs than any it can have.
	Head uint64 `cbor:"3,keyasint,omitempty"`
	// Low says that a key_packages.low event reported the available count
	// at or below the low watermark and no publish has raised it since:
	// the next fall does not report it again (txn.watermarkEvents).
	Low bool `cbor:"4,keyasint,omitempty"`
}

// deviceRecord is a device, keyed by index.Device(DID, device).
type deviceRecord struct {
	CreatedAt stamp `cbor:"1,keyasint"`
	LastSeen  stamp `cbor:"2,keyasint"`
	// Pending counts the device's pending deliveries.
	Pending int                    `cbor:"3,keyasint,omitempty"`
	Suites  map[uint16]suiteCounts `cbor:"4,keyasint,omitempty"`
}

// adjust adds to the counters of a suite, creating its entry.
func (d *deviceRecord) adjust(suite uint16, available, claimed int) {
	if d.Suites == nil {
		d.Suites = make(map[uint16]suiteCounts)
	}
	c := d.Suites[suite]
	c.Available += available
	c.Claimed += claimed
	d.Suites[suite] = c
}

// advanceHead raises the head of a suite's pool to head; it never lowers
// it, nor creates the suite's entry.
func (d *deviceRecord) advanceHead(suite uint16, head uint64) {
	if c, ok := d.Suites[suite]; ok && head > c.Head {
		c.Head = head
		d.Suites[suite] = c
	}
}

// deliveryStatus is where one Welcome's delivery to one device stands.
type deliveryStatus struct {
	State     kpd.DeliveryState `cbor:"1,keyasint"`
	Reason    kpd.Code          `cbor:"2,keyasint,omitempty"`
	Detail    string            `cbor:"3,keyasint,omitempty"`
	UpdatedAt stamp             `cbor:"4,keyasint"`
}

// deliveryRecord is one Welcome's delivery to one device, keyed by
// index.Delivery(DID, device, welcome id).
type deliveryRecord struct {
	// Refs are the device's KeyPackages the Welcome names, in its order.
	Refs      [][]byte       `cbor:"1,keyasint"`
	ConvoID   string         `cbor:"2,keyasint"`
	Seq       uint64         `cbor:"3,keyasint"` // key in the pending queue
	CreatedAt stamp          `cbor:"4,keyasint"`
	Status    deliveryStatus `cbor:"5,keyasint"`
}

// recipientEntry is one recipient device of a stored Welcome. Its live
// status is in its delivery record; when the device is deleted (and its
// deliveries with it) Gone keeps the last status, pending ones as expired.
type recipientEntry struct {
	DID    string          `cbor:"1,keyasint"`
	Device string          `cbor:"2,keyasint"`
	Refs   [][]byte        `cbor:"3,keyasint"`
	Gone   *deliveryStatus `cbor:"4,keyasint,omitempty"`
}

// rejectedEntry is a ref of a stored Welcome that was not routed.
type rejectedEntry struct {
	Ref    kpd.Ref  `cbor:"1,keyasint"` // as posted
	Reason kpd.Code `cbor:"2,keyasint"`
}

// welcomeRecord is a posted Welcome, stored once, keyed by its id.
type welcomeRecord struct {
	ConvoID    string           `cbor:"1,keyasint"`
	Sender     string           `cbor:"2,keyasint"`
	Suite      uint16           `cbor:"3,keyasint"`
	Data       []byte           `cbor:"4,keyasint"`
	CreatedAt  stamp            `cbor:"5,keyasint"`
	Recipients []recipientEntry `cbor:"6,keyasint"`
	Rejected   []rejectedEntry  `cbor:"7,keyasint,omitempty"`
}

// tokenRecord is an API token, keyed by its SHA-256.
type tokenRecord struct {
	ID        string `cbor:"1,keyasint"`
	DID       string `cbor:"2,keyasint"`
	Label     string `cbor:"3,keyasint,omitempty"`
	CreatedAt stamp  `cbor:"4,keyasint"`
}

// suiteTotals are the store-wide counts of one cipher suite's KeyPackages.
type suiteTotals struct {
	Available  int64 `cbor:"1,keyasint,omitempty"`
	Claimed    int64 `cbor:"2,keyasint,omitempty"`
	Consumed   int64 `cbor:"3,keyasint,omitempty"`
	LastResort int64 `cbor:"4,keyasint,omitempty"`
}

// statsRecord holds the store-wide counters (meta/stats). A write adds up
// what the records it changes contribute (see stats.go) and merges the sum
// into this record before its transaction commits.
type statsRecord struct {
	Suites     map[uint16]suiteTotals      `cbor:"1,keyasint,omitempty"`
	Devices    int64                       `cbor:"2,keyasint,omitempty"`
	Welcomes   int64                       `cbor:"3,keyasint,omitempty"`
	Deliveries map[kpd.DeliveryState]int64 `cbor:"4,keyasint,omitempty"`
	// Pools[i] counts (device, suite) pools whose available count falls
	// in bucket i of Bounds.
	Pools []int64 `cbor:"5,keyasint,omitempty"`
	// Events counts the outbox's events; Dropped those the outbox cap
	// discarded undelivered.
	Events  int64 `cbor:"6,keyasint,omitempty"`
	Dropped int64 `cbor:"7,keyasint,omitempty"`
	// Bounds are the kpd.PoolSizeBounds that Pools was counted with.
	Bounds []int `cbor:"8,keyasint,omitempty"`
}

// eventRecord is an outbox event, keyed by its 8-byte big-endian sequence.
type eventRecord struct {
	Type      string `cbor:"1,keyasint"`
	DID       string `cbor:"2,keyasint"`
	Device    string `cbor:"3,keyasint"`
	Suite     uint16 `cbor:"4,keyasint,omitempty"`
	Available *int   `cbor:"5,keyasint,omitempty"`
	Ref       []byte `cbor:"6,keyasint,omitempty"`
	WelcomeID string `cbor:"7,keyasint,omitempty"`
	ConvoID   string `cbor:"8,keyasint,omitempty"`
	Sender    string `cbor:"9,keyasint,omitempty"`
	CreatedAt stamp  `cbor:"10,keyasint"`
}
