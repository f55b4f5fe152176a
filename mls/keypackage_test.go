package mls_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// wantCode fails the test unless err is an *mls.Error with the given code.
func wantCode(t *testing.T, err error, code mls.Code) *mls.Error {
	t.Helper()
	var e *mls.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want *mls.Error with code %s", err, err, code)
	}
	if e.Code != code {
		t.Fatalf("code = %s (%v), want %s", e.Code, e, code)
	}
	if e.ErrorCode() != string(code) {
		t.Fatalf("ErrorCode() = %q, want %q", e.ErrorCode(), code)
	}
	return e
}

// forms returns the bare and the MLSMessage form of a fixture KeyPackage.
func forms(k testkit.FixtureKeyPackage) map[string][]byte {
	return map[string][]byte{"bare": k.Bare, "framed": k.Message}
}

func TestFixtureKeyPackages(t *testing.T) {
	f := testkit.Fixtures(t)
	reg := mls.FixtureRegistry(t, f)
	for _, fs := range f.Suites {
		suite, ok := reg.Lookup(mls.CipherSuite(fs.ID))
		if !ok {
			t.Fatalf("suite %d not configured", fs.ID)
		}
		for name, k := range fs.KeyPackages {
			for form, b := range forms(k) {
				t.Run(fmt.Sprintf("suite=%d/%s/%s", fs.ID, name, form), func(t *testing.T) {
					kp, err := mls.ParseKeyPackage(b)
					if err != nil {
						t.Fatalf("ParseKeyPackage: %v", err)
					}
					if !bytes.Equal(kp.Raw, k.Bare) {
						t.Error("Raw differs from the bare KeyPackage")
					}
					if kp.Version != 1 || kp.CipherSuite != mls.CipherSuite(fs.ID) {
						t.Errorf("version %d suite %d, want 1 and %d", kp.Version, kp.CipherSuite, fs.ID)
					}
					if got := hex.EncodeToString(kp.Ref(suite)); got != k.RefHex {
						t.Errorf("ref = %s, want %s", got, k.RefHex)
					}
					if err := kp.VerifySignatures(suite); err != nil {
						t.Errorf("VerifySignatures: %v", err)
					}
					if kp.LastResort() != k.LastResort {
						t.Errorf("LastResort() = %v, want %v", kp.LastResort(), k.LastResort)
					}
					ln := kp.LeafNode
					if ln.Credential.Type != mls.CredentialBasic || string(ln.Credential.Identity) != k.Identity {
						t.Errorf("credential type %d identity %q, want basic %q", ln.Credential.Type, ln.Credential.Identity, k.Identity)
					}
					if ln.Source != mls.SourceKeyPackage || ln.Lifetime == nil ||
						ln.Lifetime.NotBefore != uint64(k.NotBefore.Unix()) || ln.Lifetime.NotAfter != uint64(k.NotAfter.Unix()) {
						t.Errorf("source %d lifetime %+v, want key_package [%d, %d]", ln.Source, ln.Lifetime, k.NotBefore.Unix(), k.NotAfter.Unix())
					}
					if !slices.Contains(ln.Capabilities.CipherSuites, fs.ID) {
						t.Errorf("capabilities.cipher_suites %v lacks %d", ln.Capabilities.CipherSuites, fs.ID)
					}
				})
			}
		}
	}
}

func TestFixtureValidation(t *testing.T) {
	f := testkit.Fixtures(t)
	reg := mls.FixtureRegistry(t, f)
	for _, fs := range f.Suites {
		dev1 := fs.KeyPackages["alice_dev1"]
		policy := mls.FixturePolicy(dev1.Now())
		for name, k := range fs.KeyPackages {
			for form, b := range forms(k) {
				t.Run(fmt.Sprintf("suite=%d/%s/%s", fs.ID, name, form), func(t *testing.T) {
					v, err := reg.ValidateKeyPackage(b, mls.AliceDID, policy)
					switch name {
					case "alice_expired":
						e := wantCode(t, err, mls.CodeLifetimeInvalid)
						if e.Field != "key_package.leaf_node.lifetime.not_after" {
							t.Errorf("field = %q", e.Field)
						}
						// Inside its own lifetime it is valid.
						own := mls.FixturePolicy(k.Now())
						own.MaxLifetime = 0 // it was made with a 100-day lifetime
						if _, err := reg.ValidateKeyPackage(b, mls.AliceDID, own); err != nil {
							t.Errorf("at %v: %v", k.Now(), err)
						}
						return
					case "bob":
						wantCode(t, err, mls.CodeIdentityMismatch)
						if strings.Contains(err.Error(), k.Identity) {
							t.Errorf("error text %q shows the credential", err)
						}
						if _, err := reg.ValidateKeyPackage(b, "did:plc:bobbobbobbobbobbobbobbob", policy); err != nil {
							t.Errorf("as bob: %v", err)
						}
						return
					}
					if err != nil {
						t.Fatalf("ValidateKeyPackage: %v", err)
					}
					if hex.EncodeToString(v.Ref) != k.RefHex || v.LastResort != k.LastResort || v.Suite.ID != mls.CipherSuite(fs.ID) {
						t.Errorf("ref %x last resort %v suite %d, want %s %v %d", v.Ref, v.LastResort, v.Suite.ID, k.RefHex, k.LastResort, fs.ID)
					}
					if !v.NotBefore.Equal(k.NotBefore) || !v.NotAfter.Equal(k.NotAfter) {
						t.Errorf("lifetime [%v, %v]", v.NotBefore, v.NotAfter)
					}
					if !bytes.Equal(v.KeyPackage.Raw, k.Bare) {
						t.Error("Validated.KeyPackage.Raw differs from the bare KeyPackage")
					}
				})
			}
		}
	}
}

func TestFixtureInvalid(t *testing.T) {
	f := testkit.Fixtures(t)
	reg := mls.FixtureRegistry(t, f)
	for _, fs := range f.Suites {
		t.Run(fmt.Sprintf("suite=%d", fs.ID), func(t *testing.T) {
			suite, _ := reg.Lookup(mls.CipherSuite(fs.ID))
			policy := mls.FixturePolicy(fs.KeyPackages["alice_dev1"].Now())

			kp, err := mls.ParseKeyPackage(fs.Invalid.BadSignature)
			if err != nil {
				t.Fatalf("bad signature KeyPackage does not parse: %v", err)
			}
			e := wantCode(t, kp.VerifySignatures(suite), mls.CodeBadSignature)
			if e.Field != "key_package.signature" {
				t.Errorf("field = %q, want key_package.signature", e.Field)
			}
			_, err = reg.ValidateKeyPackage(fs.Invalid.BadSignature, mls.AliceDID, policy)
			wantCode(t, err, mls.CodeBadSignature)

			for name, b := range map[string][]byte{"truncated": fs.Invalid.Truncated, "trailing": fs.Invalid.TrailingBytes} {
				_, err := mls.ParseKeyPackage(b)
				wantCode(t, err, mls.CodeMalformed)
				_, err = reg.ValidateKeyPackage(b, mls.AliceDID, policy)
				if e := wantCode(t, err, mls.CodeMalformed); e.Offset < 0 || e.Offset > len(b) {
					t.Errorf("%s: offset %d outside the input of %d bytes", name, e.Offset, len(b))
				}
			}
		})
	}
}

func TestFixtureWelcome(t *testing.T) {
	f := testkit.Fixtures(t)
	reg := mls.FixtureRegistry(t, f)
	for _, fs := range f.Suites {
		framed := fs.Welcome.Message
		for form, b := range map[string][]byte{"framed": framed, "bare": framed[4:]} {
			t.Run(fmt.Sprintf("suite=%d/%s", fs.ID, form), func(t *testing.T) {
				w, suite, err := reg.ValidateWelcome(b)
				if err != nil {
					t.Fatalf("ValidateWelcome: %v", err)
				}
				if w.CipherSuite != mls.CipherSuite(fs.ID) || suite.ID != mls.CipherSuite(fs.ID) {
					t.Errorf("suite %d/%d, want %d", w.CipherSuite, suite.ID, fs.ID)
				}
				if !bytes.Equal(w.Raw, framed[4:]) {
					t.Error("Raw differs from the bare Welcome")
				}
				var got []string
				for _, ref := range w.NewMembers() {
					got = append(got, hex.EncodeToString(ref))
				}
				if !slices.Equal(got, fs.Welcome.NewMemberRefs) {
					t.Errorf("new members %v, want %v", got, fs.Welcome.NewMemberRefs)
				}
				for i, name := range fs.Welcome.ExpectRefsOf {
					kp, err := mls.ParseKeyPackage(fs.KeyPackages[name].Bare)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(kp.Ref(suite), w.Secrets[i].NewMember) {
						t.Errorf("secret %d does not name %s", i, name)
					}
					if len(w.Secrets[i].KEMOutput) == 0 || len(w.Secrets[i].Ciphertext) == 0 {
						t.Errorf("secret %d has an empty HPKE ciphertext", i)
					}
				}
				if len(w.EncryptedGroupInfo) == 0 {
					t.Error("empty encrypted_group_info")
				}
			})
		}
	}
}

func TestUnsupportedCipherSuite(t *testing.T) {
	f := testkit.Fixtures(t)
	builtin := mls.NewRegistry()
	for _, fs := range f.Suites {
		if _, ok := builtin.Lookup(mls.CipherSuite(fs.ID)); ok {
			continue
		}
		k := fs.KeyPackages["alice_dev1"]
		_, err := builtin.ValidateKeyPackage(k.Message, mls.AliceDID, mls.FixturePolicy(k.Now()))
		wantCode(t, err, mls.CodeUnsupportedCipherSuite)
		// The suite is checked before the signature.
		_, err = builtin.ValidateKeyPackage(fs.Invalid.BadSignature, mls.AliceDID, mls.FixturePolicy(k.Now()))
		wantCode(t, err, mls.CodeUnsupportedCipherSuite)
		_, _, err = builtin.ValidateWelcome(fs.Welcome.Message)
		wantCode(t, err, mls.CodeUnsupportedCipherSuite)
	}
}

// TestVersions checks UnsupportedVersion for the MLSMessage and KeyPackage
// versions, before the suite and the signatures are looked at.
func TestVersions(t *testing.T) {
	f := testkit.Fixtures(t)
	k := f.Suites[0].KeyPackages["alice_dev1"]
	policy := mls.FixturePolicy(k.Now())
	reg := mls.NewRegistry()
	set := func(b []byte, at int, v uint16) []byte {
		b = bytes.Clone(b)
		b[at], b[at+1] = byte(v>>8), byte(v)
		return b
	}
	for name, tc := range map[string]struct {
		b     []byte
		field string
	}{
		"message version 2":     {set(k.Message, 0, 2), "mls_message.version"},
		"message version 0":     {set(k.Message, 0, 0), "mls_message.version"},
		"key package version 2": {set(k.Message, 4, 2), "key_package.version"},
		"bare version 2":        {set(k.Bare, 0, 2), "key_package.version"},
		"unknown suite too":     {set(set(k.Bare, 0, 7), 2, 0x7777), "key_package.version"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := mls.ParseKeyPackage(tc.b)
			if e := wantCode(t, err, mls.CodeUnsupportedVersion); e.Field != tc.field {
				t.Errorf("field = %q, want %q", e.Field, tc.field)
			}
			_, err = reg.ValidateKeyPackage(tc.b, mls.AliceDID, policy)
			wantCode(t, err, mls.CodeUnsupportedVersion)
		})
	}

	w := set(f.Suites[0].Welcome.Message, 0, 2)
	_, err := mls.ParseWelcome(w)
	wantCode(t, err, mls.CodeUnsupportedVersion)
}

func TestErrorText(t *testing.T) {
	e := &mls.Error{Code: mls.CodeMalformed, Field: "key_package.init_key", Offset: 7, Msg: "truncated"}
	if got, want := e.Error(), "Malformed: key_package.init_key: truncated (at byte 7)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e = &mls.Error{Code: mls.CodeBadSignature, Field: "key_package.signature", Offset: -1, Msg: "does not verify"}
	if got, want := e.Error(), "BadSignature: key_package.signature: does not verify"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// TestValidatedJSON checks that a lifetime ending at 2^64-1 still marshals.
func TestValidatedJSON(t *testing.T) {
	v, err := mls.NewRegistry().ValidateKeyPackage(
		makeKeyPackage(t, 1, func(kp *mls.KeyPackage) { kp.LeafNode.Lifetime.NotAfter = ^uint64(0) }),
		testDID, mls.Policy{Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC); !v.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", v.NotAfter, want)
	}
	if _, err := json.Marshal(v); err != nil {
		t.Errorf("json.Marshal: %v", err)
	}
}

// A Welcome's new_member refs must have the length of its suite's hash:
// no KeyPackage of the suite has another.
func TestWelcomeRefLength(t *testing.T) {
	reg := mls.NewRegistry()
	for _, id := range []mls.CipherSuite{1, 4, 7} { // SHA-256, SHA-512, SHA-384
		suite, _ := reg.Lookup(id)
		for _, size := range []int{32, 48, 64} {
			w, err := mlstest.Welcome(suite, make([]byte, size))
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = reg.ValidateWelcome(w)
			if size == suite.Hash.Size() {
				if err != nil {
					t.Errorf("suite %d, a ref of %d bytes: %v", id, size, err)
				}
				continue
			}
			wantCode(t, err, mls.CodeMalformed)
		}
	}
}
