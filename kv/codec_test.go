package kv

import (
	"bytes"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/kpd-dir/kpd"
)

// sampleRecords has one fully populated value of every record type.
func sampleRecords() []any {
	at := stampOf(time.Date(2026, 11, 27, 12, 0, 0, 123456789, time.UTC))
	return []any{
		&kpRecord{DID: alice, Device: "phone", Suite: 3, State: kpd.StateClaimed, Data: []byte{1, 2, 3},
			LastResort: true, Retired: true, PublishedAt: at, NotBefore: at, NotAfter: stampOf(time.Unix(math.MaxInt64, 0)),
			Claimer: bob, ClaimedAt: &at, ConsumedAt: &at, Served: 7, Seq: 9, Welcome: "w", Pending: 2, Lapsed: true,
			Ref: []byte{0xab, 0xcd}, Spent: true},
		&deviceRecord{CreatedAt: at, LastSeen: at, Pending: 1, Suites: map[uint16]suiteCounts{1: {2, 3, 4, true}, 0xff00: {}}},
		&deliveryRecord{Refs: [][]byte{{1}, {2}}, ConvoID: "c", Seq: 4, CreatedAt: at,
			Status: deliveryStatus{State: kpd.DeliveryRejected, Reason: kpd.ReasonOther, Detail: "d", UpdatedAt: at}},
		&welcomeRecord{ConvoID: "c", Sender: alice, Suite: 1, Data: []byte{9}, CreatedAt: at,
			Recipients: []recipientEntry{{DID: bob, Device: "phone", Refs: [][]byte{{1}},
				Gone: &deliveryStatus{State: kpd.DeliveryExpired, UpdatedAt: at}}},
			Rejected: []rejectedEntry{{Ref: "ab", Reason: kpd.CodeSuiteMismatch}}},
		&tokenRecord{ID: "id", DID: alice, Label: "l", CreatedAt: at},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, rec := range sampleRecords() {
		b, err := encode(rec)
		if err != nil {
			t.Fatal(err)
		}
		got := reflect.New(reflect.TypeOf(rec).Elem()).Interface()
		if err := decode(b, got); err != nil {
			t.Fatalf("%T: %v", rec, err)
		}
		if !reflect.DeepEqual(got, rec) {
			t.Errorf("%T round trip:\n got %+v\nwant %+v", rec, got, rec)
		}
		again, _ := encode(got)
		if !bytes.Equal(again, b) {
			t.Errorf("%T: encoding is not deterministic", rec)
		}
	}
}

func TestStampIsExact(t *testing.T) {
	for _, tm := range []time.Time{{}, time.Unix(-1, 5), time.Unix(math.MaxInt64, 999_999_999), t0.Add(123 * time.Nanosecond)} {
		if got := stampOf(tm).time(); !got.Equal(tm) {
			t.Errorf("stamp of %v gives back %v", tm, got)
		}
	}
	if !stampOf(time.Time{}).time().IsZero() {
		t.Error("the zero time does not survive a stamp")
	}
}

func TestDecodeStrictness(t *testing.T) {
	// Unknown keys are tolerated: a newer kpd may add fields.
	withExtra, _ := cbor.Marshal(map[int]any{2: alice, 99: "future"})
	var tok tokenRecord
	if err := decode(withExtra, &tok); err != nil || tok.DID != alice {
		t.Fatalf("record with an unknown key: %+v, %v", tok, err)
	}
	// Duplicate keys, trailing bytes, tags and indefinite lengths are not.
	bad := map[string][]byte{
		"duplicate key":     {0xa2, 0x02, 0x61, 'a', 0x02, 0x61, 'b'},
		"trailing byte":     append(append([]byte{}, withExtra...), 0),
		"tag":               {0xc1, 0x00},
		"indefinite map":    {0xbf, 0x02, 0x61, 'a', 0xff},
		"deep nesting":      bytes.Repeat([]byte{0x81}, 20),
		"wrong type":        {0xa1, 0x02, 0x01},
		"truncated":         {0xa1, 0x02, 0x65, 'a'},
		"huge array length": {0xa1, 0x01, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	for name, b := range bad {
		var d deliveryRecord
		if err := decode(b, &d); err == nil {
			t.Errorf("%s: decoded %+v", name, d)
		}
	}
}

// FuzzDecodeRecord feeds arbitrary bytes to the decoder of every record
// type: it must never panic, and whatever decodes must re-encode to bytes
// that decode to the same encoding again (a stable fixed point).
func FuzzDecodeRecord(f *testing.F) {
	for _, rec := range sampleRecords() {
		b, err := encode(rec)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0xa1, 0x02, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, proto := range sampleRecords() {
			typ := reflect.TypeOf(proto).Elem()
			rec := reflect.New(typ).Interface()
			if decode(b, rec) != nil {
				continue
			}
			once, err := encode(rec)
			if err != nil {
				t.Fatalf("%s decoded but does not encode: %v", typ, err)
			}
			again := reflect.New(typ).Interface()
			if err := decode(once, again); err != nil {
				t.Fatalf("%s: own encoding does not decode: %v", typ, err)
			}
			twice, _ := encode(again)
			if !bytes.Equal(once, twice) {
				t.Fatalf("%s: encoding not stable: %x then %x", typ, once, twice)
			}
		}
	})
}
