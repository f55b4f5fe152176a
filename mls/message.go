package mls

import (
	"encoding/binary"
	"fmt"
)

// message is a decoded MLSMessage body, or a bare body.
type message[T any] struct {
	body   *T
	framed bool
	// version is the MLSMessage version when framed.
	version uint16
	// bodyOffset is where the body starts in the input.
	bodyOffset int
}

// decodeMessage decodes b as an MLSMessage of the given wire format or as a
// bare body named name ("key_package", "welcome"). When the second uint16 of
// b is the wire format, the MLSMessage form is tried first; b is bare when
// that fails, or parses but agrees (if not nil) rejects it, and the bare
// form parses. A parsed MLSMessage that agrees rejected is the answer when
// the bare form does not parse either. When neither parses, looksFramed
// decides which error to report: if b looks like an MLSMessage, the
// MLSMessage form's error, or a wrong wire_format; if not, the bare form's.
// looksFramed must be false for inputs shorter than 4 bytes.
//
// It fully decodes the structure and rejects trailing bytes, but checks no
// version. With an error it also returns the partly decoded body.
func decodeMessage[T any](b []byte, wire uint16, name string, looksFramed func([]byte) bool,
	decode func(*decoder, *T), agrees func(version uint16, body *T) bool) (message[T], *Error) {
	var (
		framed       message[T]
		framedErr    *Error
		framedParsed bool
	)
	if len(b) >= 4 && binary.BigEndian.Uint16(b[2:]) == wire {
		framed = message[T]{body: new(T), framed: true, bodyOffset: 4}
		d := newDecoder(b)
		framed.version = d.uint16("mls_message.version")
		d.uint16("mls_message.wire_format")
		decode(d, framed.body)
		d.finish("mls_message")
		switch {
		case d.err != nil:
			framedErr = d.err
		case agrees == nil || agrees(framed.version, framed.body):
			return framed, nil
		default:
			framedParsed = true
		}
	}
	bare := message[T]{body: new(T)}
	d := newDecoder(b)
	decode(d, bare.body)
	d.finish(name)
	switch {
	case d.err == nil:
		return bare, nil
	case framedParsed:
		return framed, nil
	case !looksFramed(b):
		return bare, d.err
	case framedErr != nil:
		return framed, framedErr
	}
	return message[T]{}, &Error{Code: CodeMalformed, Field: "mls_message.wire_format", Offset: 2,
		Msg: fmt.Sprintf("wire format %d is not mls_%s (%d)", binary.BigEndian.Uint16(b[2:]), name, wire)}
}

// unsupportedVersion reports a protocol version other than mls10.
func unsupportedVersion(field string, offset int, v uint16) *Error {
	return &Error{Code: CodeUnsupportedVersion, Field: field, Offset: offset,
		Msg: fmt.Sprintf("protocol version %d is not mls10 (1)", v)}
}
