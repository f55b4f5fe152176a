package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/mls"
)

// Media types of request and response bodies.
const (
	jsonContentType = "application/json"
	cborContentType = "application/cbor"
)

// CBOR modes: field names from the json tags (fxamacker/cbor's fallback),
// []byte as byte strings, times as RFC 3339 text in UTC; decoding rejects
// unknown fields and duplicate map keys like the JSON decoder does.
var (
	cborEnc = mustMode(cbor.EncOptions{Time: cbor.TimeRFC3339NanoUTC}.EncMode())
	cborDec = mustMode(cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		// Definite lengths only, so that cborItems can count a body's
		// items from their heads.
		IndefLength: cbor.IndefLengthForbidden,
	}.DecMode())
)

func mustMode[M any](m M, err error) M {
	if err != nil {
		panic(err)
	}
	return m
}

// byteString is a byte field of a request body: standard base64 in JSON
// (unpadded and URL-safe base64 accepted too), a byte string in CBOR.
type byteString []byte

// UnmarshalJSON decodes a base64 string in either alphabet, with or
// without padding.
func (b *byteString) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errors.New("byte fields must be base64 strings")
	}
	enc := base64.RawStdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	out, err := enc.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return fmt.Errorf("byte field is not valid base64: %v", err)
	}
	*b = out
	return nil
}

// suiteParam is a cipher suite in a request body: an integer code point or
// an RFC 9420 suite name (or a configured suite's "0x0053" name), in JSON
// or CBOR. It is resolved against the Registry by server.suite.
type suiteParam struct {
	id   uint16
	name string
}

// UnmarshalJSON accepts a JSON number (0-65535) or string.
func (p *suiteParam) UnmarshalJSON(data []byte) error {
	if len(data) > 0 && data[0] == '"' {
		return json.Unmarshal(data, &p.name)
	}
	if err := json.Unmarshal(data, &p.id); err != nil {
		return errors.New("cipher_suite must be an integer 0-65535 or a suite name")
	}
	return nil
}

// UnmarshalCBOR accepts an unsigned integer (0-65535) or a text string.
func (p *suiteParam) UnmarshalCBOR(data []byte) error {
	if cborDec.Unmarshal(data, &p.id) == nil {
		return nil
	}
	if err := cborDec.Unmarshal(data, &p.name); err != nil {
		return errors.New("cipher_suite must be an integer 0-65535 or a suite name")
	}
	return nil
}

// suite resolves p against the configured suites; a missing suite is
// BadRequest, an unknown one UnsupportedCipherSuite.
func (s *server) suite(p *suiteParam) (mls.Suite, error) {
	if p == nil {
		return mls.Suite{}, kpd.Errorf(kpd.CodeBadRequest, "cipher_suite is required")
	}
	if p.name != "" {
		if suite, ok := s.registry.ByName(p.name); ok {
			return suite, nil
		}
		// The number as text: "1", "0x0001".
		if id, err := strconv.ParseUint(p.name, 0, 16); err == nil {
			if suite, ok := s.registry.Lookup(mls.CipherSuite(id)); ok {
				return suite, nil
			}
		}
		return mls.Suite{}, kpd.Errorf(kpd.CodeUnsupportedCipherSuite, "cipher suite %q is not configured", p.name)
	}
	if suite, ok := s.registry.Lookup(mls.CipherSuite(p.id)); ok {
		return suite, nil
	}
	return mls.Suite{}, kpd.Errorf(kpd.CodeUnsupportedCipherSuite, "cipher suite %d is not configured", p.id)
}

// decode reads a required JSON or CBOR request body into v.
func decode(r *http.Request, v any) error {
	present, err := decodeOptional(r, v)
	if err == nil && !present {
		return kpd.Errorf(kpd.CodeBadRequest, "request body required")
	}
	return err
}

// decodeOptional reads a JSON or CBOR request body into v, if there is one;
// it reports whether there was. The body is read whole (it is capped by
// limitBody) and must be exactly one value of v's shape with no unknown
// fields: anything else is BadRequest, a body over the cap
// PayloadTooLarge.
func decodeOptional(r *http.Request, v any) (bool, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return false, &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitBodySize,
				Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
		}
		return false, kpd.Errorf(kpd.CodeBadRequest, "reading request body: %v", err)
	}
	if len(body) == 0 {
		return false, nil
	}
	// JSON is the default (SPEC section 5): any Content-Type but CBOR's,
	// such as curl -d's application/x-www-form-urlencoded, is read as JSON.
	if mediaType(r.Header.Get("Content-Type")) == cborContentType {
		if n := cborItems(body, MaxBodyValues); n > MaxBodyValues {
			return true, &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitBodyValues,
				Message: fmt.Sprintf("the CBOR body holds more than %d items", MaxBodyValues)}
		}
		if err := cborDec.Unmarshal(body, v); err != nil {
			return true, kpd.Errorf(kpd.CodeBadRequest, "invalid CBOR body: %v", err)
		}
		return true, nil
	}
	if n := jsonSeparators(body, MaxBodyValues); n > MaxBodyValues {
		return true, &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitBodyValues,
			Message: fmt.Sprintf("the JSON body holds more than %d values", MaxBodyValues)}
	}
	if err := decodeJSON(body, v); err != nil {
		return true, kpd.Errorf(kpd.CodeBadRequest, "invalid JSON body: %v", err)
	}
	return true, nil
}

// MaxBodyValues bounds the values of a request body: in JSON counted as its
// commas outside strings (every value of an array or object but the first
// follows one), in CBOR as its data items. Decoding a body of many tiny values (["a","a",...])
// allocates many times the body's size; no request of kpd's API needs
// more (at most 10,000 refs, or 100 claim targets of 100 devices each, by
// default).
const MaxBodyValues = 100_000

// cborItems counts the data items of the CBOR text b (each array element,
// map key and map value, tag content and the top-level item), reading only
// their heads, and stops once past limit. It stops early too at anything
// malformed or of indefinite length, which the decoder refuses anyway.
func cborItems(b []byte, limit int) int {
	n, pending, i := 0, uint64(1), 0
	for pending > 0 && i < len(b) {
		pending--
		if n++; n > limit {
			return n
		}
		major, info := b[i]>>5, b[i]&0x1f
		i++
		var arg uint64
		switch {
		case info < 24:
			arg = uint64(info)
		case info <= 27:
			size := 1 << (info - 24) // 1, 2, 4 or 8 bytes
			if size > len(b)-i {
				return n
			}
			for _, c := range b[i : i+size] {
				arg = arg<<8 | uint64(c)
			}
			i += size
		default: // reserved, or indefinite length
			return n
		}
		switch major {
		case 2, 3: // byte and text strings: skip the content
			if arg > uint64(len(b)-i) {
				return n
			}
			i += int(arg)
		case 4, 5: // arrays and maps: their items follow
			if major == 5 {
				if arg > uint64(limit) {
					return limit + 1
				}
				arg *= 2
			}
			if arg > uint64(limit) {
				return limit + 1
			}
			pending += arg
		case 6: // a tag: its content follows
			pending++
		}
	}
	return n
}

// jsonSeparators counts the commas of the JSON text b that are outside
// strings, stopping once past limit. It skips a string by searching for
// its closing quote (one preceded by an even number of backslashes), which
// is fast over the long base64 strings of a publish.
func jsonSeparators(b []byte, limit int) int {
	n := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for {
				j := bytes.IndexByte(b[i+1:], '"')
				if j < 0 {
					return n // unterminated: the decoder refuses it
				}
				i += 1 + j
				backslashes := 0
				for k := i - 1; b[k] == '\\'; k-- { // the opening quote stops it
					backslashes++
				}
				if backslashes%2 == 0 {
					break
				}
			}
		case ',':
			if n++; n > limit {
				return n
			}
		}
	}
	return n
}

// decodeJSON decodes exactly one JSON value, rejecting unknown fields.
func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// mediaType returns the lowercase media type of a Content-Type or Accept
// element without parameters, "" if there is none.
func mediaType(s string) string {
	mt, _, err := mime.ParseMediaType(s)
	if err != nil {
		return strings.ToLower(strings.TrimSpace(s))
	}
	return mt
}

// wantsCBOR reports whether the Accept header prefers application/cbor to
// application/json (JSON wins ties and is the default).
func wantsCBOR(r *http.Request) bool {
	var qCBOR, qJSON float64
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if qs, ok := params["q"]; ok {
			if v, err := strconv.ParseFloat(qs, 64); err == nil {
				q = v
			}
		}
		switch mt {
		case cborContentType:
			qCBOR = max(qCBOR, q)
		case jsonContentType:
			qJSON = max(qJSON, q)
		}
	}
	return qCBOR > 0 && qCBOR > qJSON
}

// respond writes v with the given status, as CBOR when the client asks for
// it and as JSON otherwise. Every time in v is sent in UTC.
func (s *server) respond(w http.ResponseWriter, r *http.Request, status int, v any) error {
	v = toUTC(v)
	var (
		body  []byte
		ctype string
		err   error
	)
	if wantsCBOR(r) {
		body, err = cborEnc.Marshal(v)
		ctype = cborContentType
	} else {
		body, err = json.Marshal(v)
		body = append(body, '\n')
		ctype = jsonContentType
	}
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Vary", "Accept")
	w.WriteHeader(status)
	w.Write(body) // an error here means the client went away: no one to tell
	return nil
}

var timeType = reflect.TypeFor[time.Time]()

// toUTC returns v (or, when v is not a pointer, a pointer to a copy of it)
// with every time.Time reachable through pointers, structs and slices set
// to UTC, so that responses carry RFC 3339 UTC times whatever location the
// store or the clock used. v is a freshly built response.
func toUTC(v any) any {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer {
		p := reflect.New(rv.Type())
		p.Elem().Set(rv)
		rv = p
	}
	setUTC(rv)
	return rv.Interface()
}

func setUTC(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			setUTC(v.Elem())
		}
	case reflect.Struct:
		if v.Type() == timeType {
			if v.CanSet() {
				v.Set(reflect.ValueOf(v.Interface().(time.Time).UTC()))
			}
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				setUTC(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return
		}
		for i := range v.Len() {
			setUTC(v.Index(i))
		}
	}
}
