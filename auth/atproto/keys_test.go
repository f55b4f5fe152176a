package atproto

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func TestDecodeBase58(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []byte
	}{
		{"", []byte{}},
		{"1", []byte{0}},
		{"111", []byte{0, 0, 0}},
		{"2g", []byte("a")},
		{"a3gV", []byte("bbb")},
		{"StV1DL6CwTryKyV", []byte("hello world")},
		{"11StV1DL6CwTryKyV", append([]byte{0, 0}, "hello world"...)},
		{"5Q", []byte{0xff}},
		{"LUv", []byte{0xff, 0xff}},
	} {
		got, err := decodeBase58(tt.in)
		if err != nil || !bytes.Equal(got, tt.want) {
			t.Errorf("decodeBase58(%q) = %x, %v; want %x", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"0", "O", "I", "l", "abc+", "zz\x00"} {
		if _, err := decodeBase58(bad); err == nil {
			t.Errorf("decodeBase58(%q) succeeded", bad)
		}
	}
	if _, err := decodeBase58(string(bytes.Repeat([]byte("z"), maxBase58Length+1))); err == nil {
		t.Error("overlong input accepted")
	}
	for n := range 40 {
		b := make([]byte, n)
		rand.Read(b[n/3:]) // leading zeros too
		got, err := decodeBase58(encodeBase58(b))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round trip of %x: %x, %v", b, got, err)
		}
	}
}

func TestParseMultikey(t *testing.T) {
	// Multikeys of the AT Protocol cryptography documentation (as did:key).
	for _, tt := range []struct {
		multikey string
		curve    *curve
	}{
		{"zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", k256Curve},
		{"zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo", p256Curve},
	} {
		k, err := parseMultikey(tt.multikey)
		if err != nil || k.curve != tt.curve {
			t.Errorf("parseMultikey(%s) = %v, %v; want a %s key", tt.multikey, k, err, tt.curve.alg)
		}
	}
	p, s := newP256Key(t), newK256Key(t)
	for _, good := range []*testKey{p, s} {
		k, err := parseMultikey(good.multikey)
		if err != nil || k.curve.alg != good.alg {
			t.Errorf("parseMultikey(%s) = %v, %v", good.multikey, k, err)
		}
	}
	raw, _ := decodeBase58(s.multikey[1:])
	for name, bad := range map[string]string{
		"not base58btc":      "f" + s.multikey[1:],
		"not base58":         "z0OIl",
		"unknown multicodec": "z" + encodeBase58(append([]byte{0xed, 0x01}, raw[2:]...)), // ed25519-pub
		"truncated point":    "z" + encodeBase58(raw[:len(raw)-1]),
		"uncompressed point": "z" + encodeBase58(append(append([]byte{}, raw[:2]...), append([]byte{4}, make([]byte, 64)...)...)),
		"point not on curve": "z" + encodeBase58(append(append([]byte{}, raw[:3]...), bytes.Repeat([]byte{0xff}, 32)...)),
	} {
		if _, err := parseMultikey(bad); err == nil {
			t.Errorf("%s: parseMultikey(%s) succeeded", name, bad)
		}
	}
}
