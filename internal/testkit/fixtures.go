package testkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

// FixtureFile is the ts-mls fixture file, relative to the module root. Its
// README.md, beside it, describes what it holds.
const FixtureFile = "testdata/mls/tsmls-fixtures.json"

// AliceDID is the DID of the alice_* fixture KeyPackages.
const AliceDID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

// FixtureSet is the decoded fixture file.
type FixtureSet struct {
	// Generator names the implementation that wrote the file.
	Generator string `json:"generator"`
	// Suites are the fixtures of each cipher suite, in the file's order
	// (suite 1 first).
	Suites []FixtureSuite `json:"suites"`
}

// FixtureSuite holds the fixtures of one cipher suite.
type FixtureSuite struct {
	// ID is the suite's code point.
	ID uint16 `json:"id"`
	// Name is the suite's RFC 9420 (or ts-mls) name.
	Name string `json:"name"`
	// Hash and Signature name the suite's algorithms, e.g. "SHA-512" and
	// "Ed25519".
	Hash      string `json:"hash"`
	Signature string `json:"signature"`
	// KeyPackages are valid and expired KeyPackages by name: alice_dev1,
	// alice_dev2, alice_last_resort, alice_expired and bob.
	KeyPackages map[string]FixtureKeyPackage `json:"key_packages"`
	// Invalid are broken variants of alice_dev1.
	Invalid FixtureInvalid `json:"invalid"`
	// Welcome adds alice_dev1 and alice_dev2 to a group of bob's.
	Welcome FixtureWelcome `json:"welcome"`
}

// FixtureKeyPackage is one KeyPackage in both of its forms.
type FixtureKeyPackage struct {
	// Bare is the KeyPackage itself.
	Bare []byte
	// Message is the same KeyPackage framed as an MLSMessage.
	Message []byte
	// RefHex is its KeyPackageRef as lowercase hex.
	RefHex string
	// Identity is its credential's identity, "<did>#<device>".
	Identity string
	// NotBefore and NotAfter are its lifetime.
	NotBefore, NotAfter time.Time
	// LastResort reports whether it carries the last_resort extension.
	LastResort bool
}

// FixtureInvalid holds alice_dev1 (as an MLSMessage) broken in three ways.
type FixtureInvalid struct {
	// BadSignature has one bit of the signature flipped.
	BadSignature []byte `json:"bad_signature_b64"`
	// Truncated ends early.
	Truncated []byte `json:"truncated_b64"`
	// TrailingBytes has one zero byte too many.
	TrailingBytes []byte `json:"trailing_bytes_b64"`
}

// FixtureWelcome is a Welcome and the KeyPackages it was made with.
type FixtureWelcome struct {
	// Message is the Welcome framed as an MLSMessage.
	Message []byte `json:"mls_message_b64"`
	// NewMemberRefs are the KeyPackageRefs in its secrets, as lowercase
	// hex.
	NewMemberRefs []string `json:"new_member_refs_hex"`
	// ExpectRefsOf names the suite's KeyPackages whose refs NewMemberRefs
	// holds, in the same order.
	ExpectRefsOf []string `json:"expect_refs_of"`
}

// UnmarshalJSON decodes a KeyPackage of the fixture file: byte fields from
// base64, the lifetime from Unix seconds.
func (k *FixtureKeyPackage) UnmarshalJSON(data []byte) error {
	var w struct {
		Bare       []byte `json:"key_package_b64"`
		Message    []byte `json:"mls_message_b64"`
		RefHex     string `json:"ref_hex"`
		Identity   string `json:"identity"`
		NotBefore  int64  `json:"not_before"`
		NotAfter   int64  `json:"not_after"`
		LastResort bool   `json:"last_resort"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*k = FixtureKeyPackage{
		Bare:       w.Bare,
		Message:    w.Message,
		RefHex:     w.RefHex,
		Identity:   w.Identity,
		NotBefore:  time.Unix(w.NotBefore, 0),
		NotAfter:   time.Unix(w.NotAfter, 0),
		LastResort: w.LastResort,
	}
	return nil
}

// Ref returns the KeyPackage's ref.
func (k FixtureKeyPackage) Ref() kpd.Ref { return kpd.Ref(k.RefHex) }

// Now returns a time inside the KeyPackage's lifetime: one hour after
// NotBefore, the fixtures' generation time.
func (k FixtureKeyPackage) Now() time.Time { return k.NotBefore.Add(time.Hour) }

// Spec returns the suite as a spec for mls.Registry.Add, built from its
// hash and signature ("SHA-512" and "Ed25519" give "83=sha512:ed25519").
func (s *FixtureSuite) Spec() string {
	hash := strings.ToLower(strings.ReplaceAll(s.Hash, "-", ""))
	return fmt.Sprintf("%d=%s:%s", s.ID, hash, strings.ToLower(s.Signature))
}

// Suite returns the fixtures of suite id, failing the test when the file
// has none.
func (f *FixtureSet) Suite(tb testing.TB, id uint16) *FixtureSuite {
	tb.Helper()
	for i := range f.Suites {
		if f.Suites[i].ID == id {
			return &f.Suites[i]
		}
	}
	tb.Fatalf("no fixtures for suite %d", id)
	return nil
}

// Now returns a time at which every valid fixture KeyPackage is valid:
// that of suite 1's alice_dev1 (see FixtureKeyPackage.Now).
func (f *FixtureSet) Now() time.Time {
	for _, s := range f.Suites {
		if s.ID == 1 {
			return s.KeyPackages["alice_dev1"].Now()
		}
	}
	panic("testkit: the fixtures have no suite 1") // Load checks that they do
}

// Fixtures returns the fixtures, failing the test when the file cannot be
// found or decoded. The file is read once per test binary; each call
// returns a copy of its own, which the test may modify.
func Fixtures(tb testing.TB) *FixtureSet {
	tb.Helper()
	f, err := Load()
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// Load is Fixtures for code without a testing.TB, such as examples.
func Load() (*FixtureSet, error) {
	f, err := loadOnce()
	if err != nil {
		return nil, err
	}
	return f.clone(), nil
}

// loadOnce reads and decodes the fixture file on its first call.
var loadOnce = sync.OnceValues(func() (*FixtureSet, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(root, filepath.FromSlash(FixtureFile))
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read fixtures: %w", err)
	}
	var f FixtureSet
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decode fixtures %s: %w", path, err)
	}
	if len(f.Suites) == 0 {
		return nil, fmt.Errorf("fixture file %s has no suites", path)
	}
	if !slices.ContainsFunc(f.Suites, func(s FixtureSuite) bool { return s.ID == 1 && s.KeyPackages["alice_dev1"].Message != nil }) {
		return nil, fmt.Errorf("fixture file %s lacks suite 1's alice_dev1", path)
	}
	return &f, nil
})

// moduleRoot returns the directory of the go.mod that governs the working
// directory (a test's package directory): the nearest one above it.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testkit: no go.mod above the working directory")
		}
		dir = parent
	}
}

// clone returns a deep copy of f.
func (f *FixtureSet) clone() *FixtureSet {
	c := &FixtureSet{Generator: f.Generator, Suites: slices.Clone(f.Suites)}
	for i := range c.Suites {
		s := &c.Suites[i]
		s.KeyPackages = maps.Clone(s.KeyPackages)
		for name, k := range s.KeyPackages {
			k.Bare, k.Message = bytes.Clone(k.Bare), bytes.Clone(k.Message)
			s.KeyPackages[name] = k
		}
		s.Invalid = FixtureInvalid{
			BadSignature:  bytes.Clone(s.Invalid.BadSignature),
			Truncated:     bytes.Clone(s.Invalid.Truncated),
			TrailingBytes: bytes.Clone(s.Invalid.TrailingBytes),
		}
		s.Welcome = FixtureWelcome{
			Message:       bytes.Clone(s.Welcome.Message),
			NewMemberRefs: slices.Clone(s.Welcome.NewMemberRefs),
			ExpectRefsOf:  slices.Clone(s.Welcome.ExpectRefsOf),
		}
	}
	return c
}
