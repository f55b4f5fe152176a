package mls

// Tests against the MLS working group's interoperability test vectors
// (github.com/mlswg/mls-implementations, test-vectors/). They are not part
// of this repository: they are read from shared/reference/mls-vectors beside
// the checkout, and the test is skipped when that directory is absent.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// vectorsDir returns the vectors directory: shared/reference/mls-vectors in
// the parent directory of the module root.
func vectorsDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("module root (go.mod) not found above the package directory")
		}
		dir = parent
	}
	vectors := filepath.Join(filepath.Dir(dir), "shared", "reference", "mls-vectors")
	if _, err := os.Stat(vectors); err != nil {
		t.Skipf("MLS working group test vectors not found at %s: %v", vectors, err)
	}
	return vectors
}

// readVectors decodes one vector file into v.
func readVectors(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(vectorsDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// hexBytes is a hex string in a vector file.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

// TestVectorsDeserialization checks the variable-length integer headers.
func TestVectorsDeserialization(t *testing.T) {
	var cases []struct {
		Header hexBytes `json:"vlbytes_header"`
		Length int      `json:"length"`
	}
	readVectors(t, "deserialization.json", &cases)
	if len(cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range cases {
		d := newDecoder(c.Header)
		if got := d.varint("header"); d.err != nil || got != c.Length {
			t.Errorf("header %x: got %d, %v; want %d", []byte(c.Header), got, d.err, c.Length)
		}
		d.finish("header")
		if d.err != nil {
			t.Errorf("header %x: %v", []byte(c.Header), d.err)
		}
		if enc := appendVarint(nil, c.Length); !bytes.Equal(enc, c.Header) {
			t.Errorf("length %d encodes as %x, want %x", c.Length, enc, []byte(c.Header))
		}
	}
}

// vectorPolicy validates a vector KeyPackage: its identity is no DID, and
// its lifetime has long ended, so the clock is set inside it.
func vectorPolicy(kp *KeyPackage) Policy {
	return Policy{Now: unixTime(kp.LeafNode.Lifetime.NotBefore).Add(time.Second), SkipIdentityCheck: true}
}

// checkWelcomeVector validates a KeyPackage and checks that the Welcome
// names it.
func checkWelcomeVector(t *testing.T, reg *Registry, suite CipherSuite, kpBytes, welcomeBytes []byte) {
	t.Helper()
	kp, err := ParseKeyPackage(kpBytes)
	if err != nil {
		t.Fatalf("key_package: %v", err)
	}
	if kp.CipherSuite != suite {
		t.Errorf("KeyPackage suite %d, vector says %d", kp.CipherSuite, suite)
	}
	v, err := reg.ValidateKeyPackage(kpBytes, "", vectorPolicy(kp))
	if err != nil {
		t.Fatalf("ValidateKeyPackage: %v", err)
	}
	w, ws, err := reg.ValidateWelcome(welcomeBytes)
	if err != nil {
		t.Fatalf("welcome: %v", err)
	}
	if ws.ID != suite {
		t.Errorf("Welcome suite %d, want %d", ws.ID, suite)
	}
	if !slices.ContainsFunc(w.NewMembers(), func(ref []byte) bool { return bytes.Equal(ref, v.Ref) }) {
		t.Errorf("the Welcome's new members %x do not include the KeyPackage's ref %x", w.NewMembers(), v.Ref)
	}
	if !bytes.Equal(w.Raw, welcomeBytes[4:]) || !bytes.Equal(kp.Raw, kpBytes[4:]) {
		t.Error("Raw is not the message without its MLSMessage header")
	}
}

// checkWelcomeVectors runs checkWelcomeVector, in a subtest each, on the
// cases of a vector file that lists cipher_suite, key_package and welcome.
func checkWelcomeVectors(t *testing.T, file string) {
	t.Helper()
	var cases []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		KeyPackage  hexBytes    `json:"key_package"`
		Welcome     hexBytes    `json:"welcome"`
	}
	readVectors(t, file, &cases)
	reg := NewRegistry()
	for i, c := range cases {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			checkWelcomeVector(t, reg, c.CipherSuite, c.KeyPackage, c.Welcome)
		})
	}
}

func TestVectorsWelcome(t *testing.T) {
	checkWelcomeVectors(t, "welcome.json")
}

func TestVectorsPassiveClientWelcome(t *testing.T) {
	checkWelcomeVectors(t, "passive-client-welcome.json")
}

// TestVectorsMessages parses (and validates) the mls_key_package and
// mls_welcome messages. In this file the two are unrelated.
func TestVectorsMessages(t *testing.T) {
	var cases []struct {
		KeyPackage hexBytes `json:"mls_key_package"`
		Welcome    hexBytes `json:"mls_welcome"`
	}
	readVectors(t, "messages.json", &cases)
	if len(cases) == 0 {
		t.Fatal("no cases")
	}
	reg := NewRegistry()
	for i, c := range cases {
		kp, err := ParseKeyPackage(c.KeyPackage)
		if err != nil {
			t.Fatalf("%d: mls_key_package: %v", i, err)
		}
		if _, err := reg.ValidateKeyPackage(c.KeyPackage, "", vectorPolicy(kp)); err != nil {
			t.Errorf("%d: ValidateKeyPackage: %v", i, err)
		}
		w, err := ParseWelcome(c.Welcome)
		if err != nil {
			t.Fatalf("%d: mls_welcome: %v", i, err)
		}
		if len(w.Secrets) == 0 || !bytes.Equal(w.Raw, c.Welcome[4:]) {
			t.Errorf("%d: Welcome with %d secrets, Raw of %d bytes", i, len(w.Secrets), len(w.Raw))
		}
	}
}
