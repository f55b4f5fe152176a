package index

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	longDID := "did:web:" + strings.Repeat("x", 2040)
	ref := bytes.Repeat([]byte{0xab}, 32)
	cases := []struct {
		name   string
		did    string
		device string
		suite  uint16
		seq    uint64
		wid    string
	}{
		{"typical", "did:plc:abc", "phone", 1, 7, "00112233445566778899aabbccddeeff"},
		{"empty strings", "", "", 0, 0, ""},
		{"long DID", longDID, strings.Repeat("d", 64), math.MaxUint16, math.MaxUint64, "w"},
		{"binary bytes", "did:x:\x00\xff", "\x80", 0x0053, 1 << 40, "\x00"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			did, device, err := DecodeDevice(Device(c.did, c.device))
			if err != nil || did != c.did || device != c.device {
				t.Errorf("Device: got %q %q %v", did, device, err)
			}
			did, device, suite, err := DecodeDeviceSuite(DeviceSuite(c.did, c.device, c.suite))
			if err != nil || did != c.did || device != c.device || suite != c.suite {
				t.Errorf("DeviceSuite: got %q %q %d %v", did, device, suite, err)
			}
			did, device, suite, seq, err := DecodeKeyPackage(KeyPackage(c.did, c.device, c.suite, c.seq))
			if err != nil || did != c.did || device != c.device || suite != c.suite || seq != c.seq {
				t.Errorf("KeyPackage: got %q %q %d %d %v", did, device, suite, seq, err)
			}
			did, device, gotRef, err := DecodeDeviceRef(DeviceRef(c.did, c.device, ref))
			if err != nil || did != c.did || device != c.device || !bytes.Equal(gotRef, ref) {
				t.Errorf("DeviceRef: got %q %q %x %v", did, device, gotRef, err)
			}
			did, device, wid, err := DecodeDelivery(Delivery(c.did, c.device, c.wid))
			if err != nil || did != c.did || device != c.device || wid != c.wid {
				t.Errorf("Delivery: got %q %q %q %v", did, device, wid, err)
			}
			did, device, seq, err = DecodePending(Pending(c.did, c.device, c.seq))
			if err != nil || did != c.did || device != c.device || seq != c.seq {
				t.Errorf("Pending: got %q %q %d %v", did, device, seq, err)
			}
			if v, err := DecodeUint64(Uint64(c.seq)); err != nil || v != c.seq {
				t.Errorf("Uint64: got %d %v", v, err)
			}
		})
	}
}

func TestTimeRefRoundTrip(t *testing.T) {
	ref := []byte{1, 2, 3}
	for _, tm := range []time.Time{
		{},
		time.Unix(0, 0),
		time.Unix(-1, 999_999_999),
		time.Date(2026, 11, 27, 12, 0, 0, 123_456_789, time.UTC),
		time.Unix(math.MaxInt64, 999_999_999),
		time.Unix(math.MinInt64, 0),
	} {
		got, gotRef, err := DecodeTimeRef(TimeRef(tm, ref))
		if err != nil || !got.Equal(tm) || !bytes.Equal(gotRef, ref) {
			t.Errorf("TimeRef(%v): got %v %x %v", tm, got, gotRef, err)
		}
		if got.Location() != time.UTC {
			t.Errorf("TimeRef(%v): location %v, want UTC", tm, got.Location())
		}
	}
}

func TestOrdering(t *testing.T) {
	ref := []byte{0}
	times := []time.Time{
		time.Unix(math.MinInt64, 0),
		{},
		time.Unix(-1, 0),
		time.Unix(-1, 1),
		time.Unix(0, 0),
		time.Unix(0, 999_999_999),
		time.Unix(1, 0),
		time.Unix(1<<40, 5),
		time.Unix(math.MaxInt64, 0),
	}
	for i := 1; i < len(times); i++ {
		if bytes.Compare(TimeRef(times[i-1], ref), TimeRef(times[i], ref)) >= 0 {
			t.Errorf("TimeRef(%v) does not sort before TimeRef(%v)", times[i-1], times[i])
		}
	}
	seqs := []uint64{0, 1, 255, 256, 1 << 32, math.MaxUint64}
	for i := 1; i < len(seqs); i++ {
		a, b := KeyPackage("did:a:b", "d", 1, seqs[i-1]), KeyPackage("did:a:b", "d", 1, seqs[i])
		if bytes.Compare(a, b) >= 0 {
			t.Errorf("KeyPackage seq %d does not sort before %d", seqs[i-1], seqs[i])
		}
		a, b = Pending("did:a:b", "d", seqs[i-1]), Pending("did:a:b", "d", seqs[i])
		if bytes.Compare(a, b) >= 0 {
			t.Errorf("Pending seq %d does not sort before %d", seqs[i-1], seqs[i])
		}
	}
	if bytes.Compare(DeviceSuite("did:a:b", "d", 1), DeviceSuite("did:a:b", "d", 2)) >= 0 {
		t.Error("suite 1 does not sort before suite 2")
	}
}

// TestPrefixesAreUnambiguous checks that the prefix of one DID or device is
// never a prefix of the keys of another whose name extends it.
func TestPrefixesAreUnambiguous(t *testing.T) {
	cases := []struct {
		name  string
		short []byte
		long  []byte
	}{
		{"DID", DID("did:a:b"), Device("did:a:bc", "x")},
		{"DID vs device split", DID("did:a:b"), Device("did:a:", "bx")},
		{"device", Device("did:a:b", "ph"), KeyPackage("did:a:b", "phone", 1, 1)},
		{"device vs DID boundary", Device("did:a:b", "x"), Device("did:a:bx", "")},
		{"suite", DeviceSuite("did:a:b", "d", 1), KeyPackage("did:a:b", "d", 2, 0)},
		{"delivery", Device("did:a:b", "d"), Delivery("did:a:b", "dd", "w")},
	}
	for _, c := range cases {
		if bytes.HasPrefix(c.long, c.short) {
			t.Errorf("%s: %x is a prefix of %x", c.name, c.short, c.long)
		}
	}
	// The prefixes that must match do.
	must := []struct {
		name   string
		prefix []byte
		key    []byte
	}{
		{"DID of device", DID("did:a:b"), Device("did:a:b", "d")},
		{"device of KeyPackage", Device("did:a:b", "d"), KeyPackage("did:a:b", "d", 3, 9)},
		{"suite of KeyPackage", DeviceSuite("did:a:b", "d", 3), KeyPackage("did:a:b", "d", 3, 9)},
		{"device of delivery", Device("did:a:b", "d"), Delivery("did:a:b", "d", "w")},
		{"device of pending", Device("did:a:b", "d"), Pending("did:a:b", "d", 1)},
		{"device of ref", Device("did:a:b", "d"), DeviceRef("did:a:b", "d", []byte{1})},
	}
	for _, c := range must {
		if !bytes.HasPrefix(c.key, c.prefix) {
			t.Errorf("%s: %x is not a prefix of %x", c.name, c.prefix, c.key)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	valid := KeyPackage("did:a:b", "d", 1, 2)
	cases := []struct {
		name string
		fn   func([]byte) error
		in   []byte
	}{
		{"empty device", decodeDevice, nil},
		{"truncated string", decodeDevice, []byte{5, 'a', 'b'}},
		{"huge length", decodeDevice, []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 'a'}},
		{"overlong uvarint", decodeDevice, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"non-minimal length", decodeDevice, []byte{0x81, 0x00, 'a', 0}},
		{"trailing byte", decodeDevice, append(Device("a", "b"), 0)},
		{"KeyPackage truncated", decodeKeyPackage, valid[:len(valid)-1]},
		{"KeyPackage trailing", decodeKeyPackage, append(valid, 0)},
		{"device suite short", decodeDeviceSuite, append(Device("a", "b"), 1)},
		{"device ref without ref", decodeDeviceRef, Device("a", "b")},
		{"delivery without id", decodeDelivery, Device("a", "b")},
		{"pending short", decodePending, append(Device("a", "b"), 1, 2, 3)},
		{"time short", decodeTimeRef, make([]byte, TimeLen-1)},
		{"time without ref", decodeTimeRef, TimeRef(time.Unix(5, 0), nil)},
		{"nanoseconds out of range", decodeTimeRef, append(append(TimeRef(time.Unix(5, 0), nil)[:8], 0x3b, 0x9a, 0xca, 0x00), 1)},
		{"uint64 short", decodeUint64, []byte{1, 2, 3}},
		{"uint64 long", decodeUint64, make([]byte, 9)},
	}
	for _, c := range cases {
		err := c.fn(c.in)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", c.name, err)
		}
	}
}

// decoders adapts every decoder to one signature, for the table test and
// the fuzz target.
var decoders = map[string]func([]byte) error{
	"device":      decodeDevice,
	"deviceSuite": decodeDeviceSuite,
	"keyPackage":  decodeKeyPackage,
	"deviceRef":   decodeDeviceRef,
	"delivery":    decodeDelivery,
	"pending":     decodePending,
	"timeRef":     decodeTimeRef,
	"uint64":      decodeUint64,
}

func decodeDevice(b []byte) error {
	did, device, err := DecodeDevice(b)
	return reencoded(err, b, func() []byte { return Device(did, device) })
}

func decodeDeviceSuite(b []byte) error {
	did, device, suite, err := DecodeDeviceSuite(b)
	return reencoded(err, b, func() []byte { return DeviceSuite(did, device, suite) })
}

func decodeKeyPackage(b []byte) error {
	did, device, suite, seq, err := DecodeKeyPackage(b)
	return reencoded(err, b, func() []byte { return KeyPackage(did, device, suite, seq) })
}

func decodeDeviceRef(b []byte) error {
	did, device, ref, err := DecodeDeviceRef(b)
	return reencoded(err, b, func() []byte { return DeviceRef(did, device, ref) })
}

func decodeDelivery(b []byte) error {
	did, device, wid, err := DecodeDelivery(b)
	return reencoded(err, b, func() []byte { return Delivery(did, device, wid) })
}

func decodePending(b []byte) error {
	did, device, seq, err := DecodePending(b)
	return reencoded(err, b, func() []byte { return Pending(did, device, seq) })
}

func decodeTimeRef(b []byte) error {
	tm, ref, err := DecodeTimeRef(b)
	return reencoded(err, b, func() []byte { return TimeRef(tm, ref) })
}

func decodeUint64(b []byte) error {
	v, err := DecodeUint64(b)
	return reencoded(err, b, func() []byte { return Uint64(v) })
}

// errNotCanonical reports a key that decoded but does not re-encode to the
// same bytes: the decoders must accept only canonical keys.
var errNotCanonical = errors.New("decoded key does not re-encode to its input")

func reencoded(err error, in []byte, encode func() []byte) error {
	if err != nil {
		return err
	}
	if !bytes.Equal(encode(), in) {
		return errNotCanonical
	}
	return nil
}

// FuzzDecodeKeys feeds arbitrary bytes to every decoder: none may panic,
// every error must wrap ErrMalformed, and whatever decodes must re-encode
// to exactly its input.
func FuzzDecodeKeys(f *testing.F) {
	f.Add(Device("did:plc:abc", "phone"))
	f.Add(KeyPackage("did:plc:abc", "phone", 1, 42))
	f.Add(DeviceRef("did:plc:abc", "phone", []byte{1, 2}))
	f.Add(Delivery("did:plc:abc", "phone", "w1"))
	f.Add(TimeRef(time.Unix(1_800_000_000, 5), []byte{9}))
	f.Add([]byte{0x81, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		for name, decode := range decoders {
			err := decode(b)
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s(%x): %v", name, b, err)
			}
		}
	})
}
