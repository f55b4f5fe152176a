package mls

// This file gives the tests of package mls and of package mls_test the
// ts-mls fixtures of testdata/mls (see the README.md beside them).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FixturePath is the fixture file, relative to this package's directory.
const FixturePath = "../testdata/mls/tsmls-fixtures.json"

// AliceDID is the DID of the alice_* fixtures.
const AliceDID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

// Fixtures is the decoded fixture file. Byte fields are decoded from their
// base64 (encoding/json does that for []byte).
type Fixtures struct {
	Suites []FixtureSuite `json:"suites"`
}

// FixtureSuite holds the fixtures of one cipher suite.
type FixtureSuite struct {
	ID          CipherSuite                  `json:"id"`
	Name        string                       `json:"name"`
	Hash        string                       `json:"hash"`
	Signature   string                       `json:"signature"`
	KeyPackages map[string]FixtureKeyPackage `json:"key_packages"`
	Invalid     struct {
		BadSignature  []byte `json:"bad_signature_b64"`
		Truncated     []byte `json:"truncated_b64"`
		TrailingBytes []byte `json:"trailing_bytes_b64"`
	} `json:"invalid"`
	Welcome struct {
		MLSMessage    []byte   `json:"mls_message_b64"`
		NewMemberRefs []string `json:"new_member_refs_hex"`
		ExpectRefsOf  []string `json:"expect_refs_of"`
	} `json:"welcome"`
}

// FixtureKeyPackage is one KeyPackage in both forms.
type FixtureKeyPackage struct {
	Bare       []byte `json:"key_package_b64"`
	Framed     []byte `json:"mls_message_b64"`
	RefHex     string `json:"ref_hex"`
	Identity   string `json:"identity"`
	NotBefore  int64  `json:"not_before"`
	NotAfter   int64  `json:"not_after"`
	LastResort bool   `json:"last_resort"`
}

// LoadFixtures reads and decodes the fixture file.
func LoadFixtures(tb testing.TB) *Fixtures {
	tb.Helper()
	data, err := os.ReadFile(filepath.FromSlash(FixturePath))
	if err != nil {
		tb.Fatalf("read fixtures: %v", err)
	}
	var f Fixtures
	if err := json.Unmarshal(data, &f); err != nil {
		tb.Fatalf("decode fixtures: %v", err)
	}
	if len(f.Suites) == 0 {
		tb.Fatal("fixture file has no suites")
	}
	return &f
}

// SuiteSpec returns the Registry.Add spec of the suite, built from its hash
// and signature fields ("SHA-512", "Ed25519" become "83=sha512:ed25519").
func (s *FixtureSuite) SuiteSpec() string {
	hash := strings.ToLower(strings.ReplaceAll(s.Hash, "-", ""))
	return fmt.Sprintf("%d=%s:%s", s.ID, hash, strings.ToLower(s.Signature))
}

// Registry returns a Registry with the built-in suites plus every fixture
// suite, added through Registry.Add.
func (f *Fixtures) Registry(tb testing.TB) *Registry {
	tb.Helper()
	r := NewRegistry()
	for _, s := range f.Suites {
		if err := r.Add(s.SuiteSpec()); err != nil {
			tb.Fatalf("Add(%q): %v", s.SuiteSpec(), err)
		}
	}
	return r
}

// Now returns a clock inside the KeyPackage's lifetime: one hour after
// not_before, the fixtures' generation time.
func (k FixtureKeyPackage) Now() time.Time {
	return time.Unix(k.NotBefore, 0).Add(time.Hour)
}

// FixturePolicy returns kpd's default policy at the given clock.
func FixturePolicy(now time.Time) Policy {
	return Policy{Now: now, MaxLifetime: DefaultMaxLifetime, ClockSkew: DefaultClockSkew}
}
