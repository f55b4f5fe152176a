package mls

import (
	"encoding/binary"
	"fmt"
)

// maxVarint is the largest value of an RFC 9420 variable-length integer
// (30 bits).
const maxVarint = 1<<30 - 1

// decoder reads RFC 9420 structures (TLS presentation language with the
// variable-length vectors of RFC 9420 section 2.1.2) from untrusted bytes.
//
// Every read is bounded by end, the end of the innermost vector being read,
// and every length is checked against the bytes remaining before anything
// is sliced or allocated. Byte fields are sub-slices of the input (with
// their capacity cut, so appending to them never writes into the input).
//
// The first error is sticky: later reads return zero values and change
// nothing, so a whole structure can be read before err is checked.
type decoder struct {
	buf []byte
	off int
	end int
	err *Error
}

func newDecoder(b []byte) *decoder { return &decoder{buf: b, end: len(b)} }

// fail records the first error; offset is where the faulty field starts.
func (d *decoder) fail(code Code, field string, offset int, format string, args ...any) {
	if d.err == nil {
		d.err = &Error{Code: code, Field: field, Offset: offset, Msg: fmt.Sprintf(format, args...)}
	}
}

// take returns the next n bytes, or nil after an error.
func (d *decoder) take(field string, n int) []byte {
	if d.err != nil || !d.has(field, d.off, n) {
		return nil
	}
	b := d.buf[d.off : d.off+n : d.off+n]
	d.off += n
	return b
}

// has reports whether n bytes remain after start, and fails if not.
func (d *decoder) has(field string, start, n int) bool {
	if rest := d.end - start; n > rest {
		d.fail(CodeMalformed, field, start, "truncated: needs %d bytes, %d remain", n, rest)
		return false
	}
	return true
}

func (d *decoder) uint8(field string) uint8 {
	if b := d.take(field, 1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) uint16(field string) uint16 {
	if b := d.take(field, 2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) uint64(field string) uint64 {
	if b := d.take(field, 8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// varint reads a variable-length integer (RFC 9420 section 2.1.2): the top
// two bits of the first byte give its size (00: 1 byte, 01: 2, 10: 4); 11
// is invalid, and a value must use the shortest form that holds it.
func (d *decoder) varint(field string) int {
	start := d.off
	if d.err != nil || !d.has(field, start, 1) {
		return 0
	}
	prefix := d.buf[start] >> 6
	if prefix == 3 {
		d.fail(CodeMalformed, field, start, "invalid variable-length integer prefix 0b11")
		return 0
	}
	size := 1 << prefix
	if !d.has(field, start, size) {
		return 0
	}
	v := int(d.buf[start] & 0x3f)
	for _, c := range d.buf[start+1 : start+size] {
		v = v<<8 | int(c)
	}
	if size > 1 && v < 1<<(8*size/2-2) {
		d.fail(CodeMalformed, field, start, "non-minimal variable-length integer: %d in %d bytes", v, size)
		return 0
	}
	d.off += size
	return v
}

// length reads a vector's length prefix and checks it against the bytes
// remaining.
func (d *decoder) length(field string) int {
	start := d.off
	n := d.varint(field)
	if rest := d.end - d.off; d.err == nil && n > rest {
		d.fail(CodeMalformed, field, start, "declared length %d exceeds the %d bytes remaining", n, rest)
		return 0
	}
	return n
}

// opaque reads an opaque<V>.
func (d *decoder) opaque(field string) []byte {
	return d.take(field, d.length(field))
}

// vector reads a vector<V> of variable-size elements, calling each until
// the vector's bytes are consumed; each must read exactly one element, of
// at least one byte.
func (d *decoder) vector(field string, each func()) {
	n := d.length(field)
	if d.err != nil {
		return
	}
	outer := d.end
	d.end = d.off + n
	for d.err == nil && d.off < d.end {
		each()
	}
	d.end = outer
}

// uint16s reads a vector<V> of uint16 values.
func (d *decoder) uint16s(field string) []uint16 {
	start := d.off
	b := d.opaque(field)
	if len(b)%2 != 0 {
		d.fail(CodeMalformed, field, start, "vector of uint16 has odd length %d", len(b))
		return nil
	}
	if len(b) == 0 {
		return nil
	}
	vs := make([]uint16, len(b)/2)
	for i := range vs {
		vs[i] = binary.BigEndian.Uint16(b[2*i:])
	}
	return vs
}

// finish fails if bytes remain after the structure.
func (d *decoder) finish(field string) {
	if d.err == nil && d.off != len(d.buf) {
		d.fail(CodeMalformed, field, d.off, "%d trailing bytes", len(d.buf)-d.off)
	}
}

// appendVarint appends n as an RFC 9420 variable-length integer in its
// minimal form. It panics if n exceeds 2^30-1, the largest encodable value.
func appendVarint(b []byte, n int) []byte {
	switch {
	case n < 0 || n > maxVarint:
		panic(fmt.Sprintf("mls: %d does not fit a variable-length integer", n))
	case n < 1<<6:
		return append(b, byte(n))
	case n < 1<<14:
		return binary.BigEndian.AppendUint16(b, uint16(n)|0x4000)
	default:
		return binary.BigEndian.AppendUint32(b, uint32(n)|0x8000_0000)
	}
}

// AppendOpaque appends v as an RFC 9420 opaque<V>: its minimal
// variable-length size, then its bytes. It panics if v is 2^30 bytes or
// longer.
func AppendOpaque(b, v []byte) []byte {
	return append(appendVarint(b, len(v)), v...)
}
