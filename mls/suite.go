package mls

import (
	"crypto"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	// Register the hash functions that suites name, so crypto.Hash.New works.
	_ "crypto/sha256"
	_ "crypto/sha512"
)

// CipherSuite is an MLS cipher suite code point (RFC 9420 section 17.1).
type CipherSuite uint16

// Suite is what kpd needs of a cipher suite: the hash of its KeyPackageRefs
// and its signature algorithm. kpd never uses the suite's KEM or AEAD.
type Suite struct {
	ID CipherSuite
	// Name is the RFC 9420 name for suites 1-7 (e.g.
	// "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519") and the hex code point
	// (e.g. "0x0053") for configured suites.
	Name string
	// Hash is crypto.SHA256, crypto.SHA384 or crypto.SHA512.
	Hash crypto.Hash
	// Signature is one of "ed25519", "ed448", "p256", "p384", "p521",
	// "mldsa87".
	Signature string
}

// Registry is the set of cipher suites kpd accepts. It is safe for
// concurrent reads (Lookup, ByName, Suites, ValidateKeyPackage,
// ValidateWelcome) once configured; Add must not run concurrently with
// anything else. The zero Registry is empty; NewRegistry has the RFC 9420
// suites.
type Registry struct {
	byID   map[CipherSuite]Suite
	byName map[string]CipherSuite
}

// builtinSuites are the cipher suites of RFC 9420 section 17.1.
var builtinSuites = []Suite{
	{1, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", crypto.SHA256, "ed25519"},
	{2, "MLS_128_DHKEMP256_AES128GCM_SHA256_P256", crypto.SHA256, "p256"},
	{3, "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", crypto.SHA256, "ed25519"},
	{4, "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448", crypto.SHA512, "ed448"},
	{5, "MLS_256_DHKEMP521_AES256GCM_SHA512_P521", crypto.SHA512, "p521"},
	{6, "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448", crypto.SHA512, "ed448"},
	{7, "MLS_256_DHKEMP384_AES256GCM_SHA384_P384", crypto.SHA384, "p384"},
}

var hashNames = map[string]crypto.Hash{
	"sha256": crypto.SHA256,
	"sha384": crypto.SHA384,
	"sha512": crypto.SHA512,
}

// NewRegistry returns a Registry holding the RFC 9420 suites 1-7.
func NewRegistry() *Registry {
	r := &Registry{}
	for _, s := range builtinSuites {
		r.put(s)
	}
	return r
}

func (r *Registry) put(s Suite) {
	if r.byID == nil {
		r.byID, r.byName = map[CipherSuite]Suite{}, map[string]CipherSuite{}
	}
	r.byID[s.ID] = s
	r.byName[strings.ToLower(s.Name)] = s.ID
}

// Add configures a suite from a spec "ID=HASH:SIGNATURE": ID in decimal or
// 0x-prefixed hex (1-65535), HASH one of sha256, sha384, sha512, SIGNATURE
// one of ed25519, ed448, p256, p384, p521, mldsa87 (all case-insensitive),
// e.g. "0x0053=sha512:ed25519". Adding a suite that is already present with
// the same hash and signature is a no-op; redefining one is an error. The
// errors are plain errors whose text says what is wrong with spec.
func (r *Registry) Add(spec string) error {
	idText, algs, ok := strings.Cut(strings.TrimSpace(spec), "=")
	hashText, sigText, ok2 := strings.Cut(algs, ":")
	if !ok || !ok2 {
		return fmt.Errorf("cipher suite %q: want ID=HASH:SIGNATURE, e.g. 0x0053=sha512:ed25519", spec)
	}
	id, err := parseSuiteID(strings.TrimSpace(idText))
	if err != nil {
		return fmt.Errorf("cipher suite %q: %w", spec, err)
	}
	hash, ok := hashNames[strings.ToLower(strings.TrimSpace(hashText))]
	if !ok {
		return fmt.Errorf("cipher suite %q: unknown hash %q (want sha256, sha384 or sha512)", spec, hashText)
	}
	sig := strings.ToLower(strings.TrimSpace(sigText))
	if _, ok := signatureSchemes[sig]; !ok {
		return fmt.Errorf("cipher suite %q: unknown signature %q (want one of %s)",
			spec, sigText, strings.Join(slices.Sorted(maps.Keys(signatureSchemes)), ", "))
	}
	if old, ok := r.byID[id]; ok {
		if old.Hash == hash && old.Signature == sig {
			return nil
		}
		return fmt.Errorf("cipher suite %q: suite %d is already defined as %s with %s and %s",
			spec, id, old.Name, hashLabel(old.Hash), old.Signature)
	}
	r.put(Suite{ID: id, Name: fmt.Sprintf("0x%04X", uint16(id)), Hash: hash, Signature: sig})
	return nil
}

func parseSuiteID(s string) (CipherSuite, error) {
	var (
		n   uint64
		err error
	)
	if hex, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		n, err = strconv.ParseUint(hex, 16, 16)
	} else {
		n, err = strconv.ParseUint(s, 10, 16)
	}
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid ID %q (want 1-65535, decimal or 0x-hex)", s)
	}
	return CipherSuite(n), nil
}

func hashLabel(h crypto.Hash) string {
	for name, v := range hashNames {
		if v == h {
			return name
		}
	}
	return h.String()
}

// Lookup returns the suite with the given ID, if configured.
func (r *Registry) Lookup(id CipherSuite) (Suite, bool) {
	s, ok := r.byID[id]
	return s, ok
}

// ByName returns the suite with the given name: an RFC 9420 name of suites
// 1-7 or a configured suite's Name ("0x0053"), compared case-insensitively.
func (r *Registry) ByName(name string) (Suite, bool) {
	id, ok := r.byName[strings.ToLower(name)]
	if !ok {
		return Suite{}, false
	}
	return r.byID[id], true
}

// Suites returns every configured suite, sorted by ID.
func (r *Registry) Suites() []Suite {
	return slices.SortedFunc(maps.Values(r.byID), func(a, b Suite) int { return int(a.ID) - int(b.ID) })
}
