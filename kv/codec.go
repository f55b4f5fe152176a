package kv

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Records are CBOR maps with small integer keys, encoded deterministically
// (RFC 8949 core deterministic encoding) so that equal records are equal
// bytes. Decoding tolerates unknown keys, so that a newer kpd can add
// fields an older one ignores, but rejects duplicate keys, indefinite
// lengths, tags, trailing bytes and anything nested or sized beyond what a
// record can hold. Decoded byte strings are copies: a record stays valid
// after the transaction that read it.
var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  8,
		MaxArrayElements: 1 << 16,
		MaxMapPairs:      1 << 16,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// encode returns the deterministic CBOR encoding of a record.
func encode(v any) ([]byte, error) {
	b, err := encMode.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

// decode decodes one record from b into v.
func decode(b []byte, v any) error {
	if err := decMode.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	return nil
}
