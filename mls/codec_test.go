package mls

import (
	"bytes"
	"strings"
	"testing"
)

func TestVarint(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want int
		err  string // substring of the error message; "" for success
	}{
		{[]byte{0x00}, 0, ""},
		{[]byte{0x3f}, 63, ""},
		{[]byte{0x40, 0x40}, 64, ""},
		{[]byte{0x7f, 0xff}, 16383, ""},
		{[]byte{0x80, 0x00, 0x40, 0x00}, 16384, ""},
		{[]byte{0xbf, 0xff, 0xff, 0xff}, 1<<30 - 1, ""},
		{[]byte{0x40, 0x3f}, 0, "non-minimal"},
		{[]byte{0x40, 0x00}, 0, "non-minimal"},
		{[]byte{0x80, 0x00, 0x3f, 0xff}, 0, "non-minimal"},
		{[]byte{0x80, 0x00, 0x00, 0x05}, 0, "non-minimal"},
		{[]byte{0xc0}, 0, "0b11"},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0, "0b11"},
		{[]byte{}, 0, "truncated"},
		{[]byte{0x40}, 0, "truncated"},
		{[]byte{0x80, 0x00, 0x40}, 0, "truncated"},
	} {
		d := newDecoder(tc.in)
		got := d.varint("v")
		switch {
		case tc.err == "" && (d.err != nil || got != tc.want):
			t.Errorf("%x: got %d, %v; want %d", tc.in, got, d.err, tc.want)
		case tc.err != "" && (d.err == nil || !strings.Contains(d.err.Msg, tc.err) || d.err.Code != CodeMalformed):
			t.Errorf("%x: error %v, want Malformed %q", tc.in, d.err, tc.err)
		case tc.err != "" && d.err.Offset != 0:
			t.Errorf("%x: offset %d, want 0", tc.in, d.err.Offset)
		}
		if tc.err == "" {
			if enc := appendVarint(nil, tc.want); !bytes.Equal(enc, tc.in) {
				t.Errorf("%d encodes as %x, want %x", tc.want, enc, tc.in)
			}
		}
	}
}

func TestAppendVarintPanics(t *testing.T) {
	for _, n := range []int{-1, 1 << 30} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("appendVarint(%d) did not panic", n)
				}
			}()
			appendVarint(nil, n)
		}()
	}
}

func TestDecoderVectors(t *testing.T) {
	t.Run("length beyond the input", func(t *testing.T) {
		d := newDecoder([]byte{0x05, 1, 2})
		if b := d.opaque("o"); b != nil || d.err == nil || d.err.Offset != 0 ||
			!strings.Contains(d.err.Msg, "declared length 5 exceeds the 2 bytes remaining") {
			t.Errorf("got %x, %v", b, d.err)
		}
	})
	t.Run("length beyond the enclosing vector", func(t *testing.T) {
		// An outer vector of 2 bytes holding an element that claims 3.
		d := newDecoder([]byte{0x02, 0x03, 0xaa, 0xbb, 0xcc})
		d.vector("outer", func() { d.opaque("inner") })
		if d.err == nil || d.err.Field != "inner" || d.err.Offset != 1 {
			t.Errorf("error %v, want one for inner at byte 1", d.err)
		}
	})
	t.Run("elements fill the vector", func(t *testing.T) {
		d := newDecoder([]byte{0x04, 0x01, 0xaa, 0x01, 0xbb, 0x00})
		var got [][]byte
		d.vector("outer", func() { got = append(got, d.opaque("inner")) })
		d.opaque("after")
		d.finish("all")
		if d.err != nil || len(got) != 2 || got[0][0] != 0xaa || got[1][0] != 0xbb {
			t.Errorf("got %x, %v", got, d.err)
		}
	})
	t.Run("odd uint16 vector", func(t *testing.T) {
		d := newDecoder([]byte{0x03, 0, 1, 0})
		if d.uint16s("u"); d.err == nil || !strings.Contains(d.err.Msg, "odd length 3") {
			t.Errorf("error %v", d.err)
		}
	})
	t.Run("uint16 vector", func(t *testing.T) {
		d := newDecoder([]byte{0x04, 0, 1, 0xff, 0x02})
		if got := d.uint16s("u"); d.err != nil || len(got) != 2 || got[0] != 1 || got[1] != 0xff02 {
			t.Errorf("got %v, %v", got, d.err)
		}
	})
	t.Run("sub-slices cannot grow into the input", func(t *testing.T) {
		in := []byte{0x01, 0xaa, 0xbb}
		d := newDecoder(in)
		b := d.opaque("o")
		_ = append(b, 0xff)
		if in[2] != 0xbb {
			t.Error("appending to a decoded field overwrote the input")
		}
	})
	t.Run("sticky error", func(t *testing.T) {
		d := newDecoder([]byte{0xc0, 0x00, 0x01})
		d.opaque("first")
		if v := d.uint16("second"); v != 0 || d.err.Field != "first" {
			t.Errorf("read %d after an error; error %v", v, d.err)
		}
	})
	t.Run("trailing bytes", func(t *testing.T) {
		d := newDecoder([]byte{0x00, 0x00})
		d.opaque("o")
		d.finish("all")
		if d.err == nil || d.err.Offset != 1 || !strings.Contains(d.err.Msg, "1 trailing bytes") {
			t.Errorf("error %v", d.err)
		}
	})
}
