// Package index encodes and decodes the composite keys of kpd's bbolt
// buckets. It is pure: no I/O, no bbolt.
//
// Strings (DIDs, device names, welcome ids) are written as a uvarint byte
// length followed by the bytes, so a key built from a DID, or from a DID and
// a device, is a prefix of exactly the keys of that DID or device and of no
// other: "did:a" can never be mistaken for the start of "did:ab". Cipher
// suites are big-endian uint16, sequence numbers big-endian uint64, and
// times a sign-flipped big-endian uint64 of Unix seconds followed by a
// big-endian uint32 of nanoseconds, so that byte order equals numeric and
// chronological order. KeyPackageRefs are raw bytes at the end of a key.
//
// Every decoder accepts exactly what the matching builder produces: it
// rejects truncated input, trailing bytes, non-minimal length prefixes and
// out-of-range nanoseconds with an error wrapping ErrMalformed, and never
// allocates more than its input's length.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed key")

// Sizes of the fixed-width components.
const (
	SuiteLen = 2
	SeqLen   = 8
	TimeLen  = 12
)

// DID returns the prefix shared by every key of a DID: devices, KeyPackages,
// deliveries.
func DID(did string) []byte { return appendString(nil, did) }

// Device returns the key of a device (DID, device). It is also the prefix
// of that device's KeyPackage, delivery and pending keys.
func Device(did, device string) []byte {
	return appendString(appendString(nil, did), device)
}

// DeviceSuite returns the key (DID, device, suite): the prefix of a
// device's KeyPackages of one suite, and the key of its last-resort slot.
func DeviceSuite(did, device string, suite uint16) []byte {
	return binary.BigEndian.AppendUint16(Device(did, device), suite)
}

// KeyPackage returns the key (DID, device, suite, seq) of a KeyPackage,
// seq being its publish sequence: a device's KeyPackages of one suite are
// contiguous and in publish order, which makes them its FIFO pool.
func KeyPackage(did, device string, suite uint16, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(DeviceSuite(did, device, suite), seq)
}

// DeviceRef returns the key (DID, device, ref) under which schema 3 listed a
// device's KeyPackages (its device_key_packages bucket, which the migration
// to schema 4 reads).
func DeviceRef(did, device string, ref []byte) []byte {
	return append(Device(did, device), ref...)
}

// Delivery returns the key (DID, device, welcome id) of a Welcome delivery.
func Delivery(did, device, welcomeID string) []byte {
	return appendString(Device(did, device), welcomeID)
}

// Pending returns the key (DID, device, seq) of a pending delivery in its
// device's oldest-first queue.
func Pending(did, device string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(Device(did, device), seq)
}

// TimeRef returns the key (time, ref) of a time-ordered index.
func TimeRef(t time.Time, ref []byte) []byte {
	return append(appendTime(make([]byte, 0, TimeLen+len(ref)), t), ref...)
}

// Uint64 returns v as 8 big-endian bytes.
func Uint64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// DecodeDevice decodes a Device key.
func DecodeDevice(k []byte) (did, device string, err error) {
	r := reader{b: k}
	did, device = r.string(), r.string()
	return did, device, r.end("device")
}

// DecodeDeviceSuite decodes a DeviceSuite key.
func DecodeDeviceSuite(k []byte) (did, device string, suite uint16, err error) {
	r := reader{b: k}
	did, device, suite = r.string(), r.string(), r.uint16()
	return did, device, suite, r.end("device suite")
}

// DecodeKeyPackage decodes a KeyPackage key.
func DecodeKeyPackage(k []byte) (did, device string, suite uint16, seq uint64, err error) {
	r := reader{b: k}
	did, device, suite, seq = r.string(), r.string(), r.uint16(), r.uint64()
	return did, device, suite, seq, r.end("KeyPackage")
}

// DecodeDeviceRef decodes a DeviceRef key; the ref must not be empty. The
// returned ref aliases k.
func DecodeDeviceRef(k []byte) (did, device string, ref []byte, err error) {
	r := reader{b: k}
	did, device, ref = r.string(), r.string(), r.rest()
	return did, device, ref, r.end("device ref")
}

// DecodeDelivery decodes a Delivery key.
func DecodeDelivery(k []byte) (did, device, welcomeID string, err error) {
	r := reader{b: k}
	did, device, welcomeID = r.string(), r.string(), r.string()
	return did, device, welcomeID, r.end("delivery")
}

// DecodePending decodes a Pending key.
func DecodePending(k []byte) (did, device string, seq uint64, err error) {
	r := reader{b: k}
	did, device, seq = r.string(), r.string(), r.uint64()
	return did, device, seq, r.end("pending")
}

// DecodeTimeRef decodes a TimeRef key. The time is in UTC; the returned ref
// aliases k.
func DecodeTimeRef(k []byte) (t time.Time, ref []byte, err error) {
	r := reader{b: k}
	t, ref = r.time(), r.rest()
	return t, ref, r.end("time ref")
}

// DecodeUint64 decodes 8 big-endian bytes.
func DecodeUint64(b []byte) (uint64, error) {
	r := reader{b: b}
	v := r.uint64()
	return v, r.end("uint64")
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// appendTime writes t as Unix seconds with the sign bit flipped (so that
// negative seconds sort first) and the nanoseconds within the second.
func appendTime(dst []byte, t time.Time) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(t.Unix())^(1<<63))
	return binary.BigEndian.AppendUint32(dst, uint32(t.Nanosecond()))
}

// reader consumes a key from the front. After the first error every method
// returns zero values; end reports the error, or trailing bytes.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	r.b = nil
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("%s: need %d bytes, have %d", what, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	if r.err != nil {
		return ""
	}
	n, size := binary.Uvarint(r.b)
	switch {
	case size <= 0:
		r.fail("bad length prefix")
		return ""
	case size > 1 && r.b[size-1] == 0:
		r.fail("non-minimal length prefix")
		return ""
	case n > uint64(len(r.b)-size):
		r.fail("length %d exceeds the %d bytes left", n, len(r.b)-size)
		return ""
	}
	r.b = r.b[size:]
	return string(r.take(int(n), "string"))
}

func (r *reader) uint16() uint16 {
	b := r.take(SuiteLen, "suite")
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (r *reader) uint64() uint64 {
	b := r.take(SeqLen, "uint64")
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (r *reader) time() time.Time {
	b := r.take(TimeLen, "time")
	if b == nil {
		return time.Time{}
	}
	sec := int64(binary.BigEndian.Uint64(b) ^ (1 << 63))
	nsec := binary.BigEndian.Uint32(b[8:])
	if nsec >= 1e9 {
		r.fail("nanoseconds %d out of range", nsec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// rest returns the remaining bytes, which must not be empty.
func (r *reader) rest() []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) == 0 {
		r.fail("missing ref")
		return nil
	}
	v := r.b
	r.b = nil
	return v
}

func (r *reader) end(what string) error {
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return fmt.Errorf("%s key: %w", what, r.err)
	}
	return nil
}
