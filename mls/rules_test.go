package mls_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// The KeyPackages made by these tests live around testNow.
var testNow = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	testDID         = "did:plc:testtesttesttesttest"
	mldsaSuite      = mls.CipherSuite(0xF001)
	unknownSuiteID  = mls.CipherSuite(0x7777)
	testMaxLifetime = 90 * 24 * time.Hour
)

// testRegistry has the built-in suites and an ML-DSA-87 one.
func testRegistry(t testing.TB) *mls.Registry {
	t.Helper()
	r := mls.NewRegistry()
	if err := r.Add("0xF001=sha512:mldsa87"); err != nil {
		t.Fatal(err)
	}
	return r
}

func testPolicy() mls.Policy {
	return mls.Policy{Now: testNow, MaxLifetime: testMaxLifetime, ClockSkew: time.Hour}
}

// makeKeyPackage returns a bare KeyPackage of suite id for testDID#dev,
// valid from an hour before testNow for a day, changed by modify.
func makeKeyPackage(t testing.TB, id mls.CipherSuite, modify func(*mls.KeyPackage)) []byte {
	t.Helper()
	suite, ok := testRegistry(t).Lookup(id)
	if !ok {
		suite = mls.Suite{ID: id, Signature: "ed25519"} // an unconfigured suite
	}
	bare, _, err := mlstest.KeyPackage(suite, mlstest.Options{
		Identity:  testDID + "#dev",
		NotBefore: testNow.Add(-time.Hour),
		NotAfter:  testNow.Add(24 * time.Hour),
		Modify:    modify,
	})
	if err != nil {
		t.Fatal(err)
	}
	return bare
}

func TestInvalidKeyPackage(t *testing.T) {
	reg := testRegistry(t)
	for name, modify := range map[string]func(*mls.KeyPackage){
		"source update": func(kp *mls.KeyPackage) {
			kp.LeafNode.Source, kp.LeafNode.Lifetime = mls.SourceUpdate, nil
		},
		"source commit": func(kp *mls.KeyPackage) {
			kp.LeafNode.Source, kp.LeafNode.Lifetime, kp.LeafNode.ParentHash = mls.SourceCommit, nil, []byte("parent")
		},
		"encryption key is init key": func(kp *mls.KeyPackage) { kp.LeafNode.EncryptionKey = kp.InitKey },
		"duplicate key package extension": func(kp *mls.KeyPackage) {
			kp.Extensions = []mls.Extension{{Type: 0x000a}, {Type: 0xff00}, {Type: 0x000a, Data: []byte{1}}}
		},
		"duplicate leaf extension": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.Extensions = []uint16{0xff00}
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0xff00}, {Type: 0xff00}}
		},
		"credential type not in capabilities": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.Credentials = []uint16{mls.CredentialX509}
		},
		"unknown credential type": func(kp *mls.KeyPackage) {
			kp.LeafNode.Credential.Type = 0x0007
			kp.LeafNode.Capabilities.Credentials = []uint16{1, 7}
		},
		"version not in capabilities": func(kp *mls.KeyPackage) { kp.LeafNode.Capabilities.Versions = []uint16{2} },
		"x509 without certificates": func(kp *mls.KeyPackage) {
			kp.LeafNode.Credential = mls.Credential{Type: mls.CredentialX509}
			kp.LeafNode.Capabilities.Credentials = []uint16{mls.CredentialX509}
		},
		"leaf extension not in capabilities": func(kp *mls.KeyPackage) {
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0xff01, Data: []byte("x")}}
		},
		"last_resort with a body": func(kp *mls.KeyPackage) {
			kp.Extensions = []mls.Extension{{Type: mls.ExtensionLastResort, Data: []byte{0}}}
		},
		// Of the default types only application_id belongs in a leaf, and
		// none in a KeyPackage; 0 is reserved.
		"external_senders in the leaf": func(kp *mls.KeyPackage) {
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0x0005, Data: []byte("x")}}
		},
		"ratchet_tree in the leaf, listed": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.Extensions = []uint16{0x0002}
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0x0002}}
		},
		"reserved leaf extension": func(kp *mls.KeyPackage) {
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0x0000}}
		},
		"application_id in the KeyPackage": func(kp *mls.KeyPackage) {
			kp.Extensions = []mls.Extension{{Type: 0x0001, Data: []byte("app")}}
		},
		"required_capabilities in the KeyPackage": func(kp *mls.KeyPackage) {
			kp.Extensions = []mls.Extension{{Type: 0x0003}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			bare := makeKeyPackage(t, 1, modify)
			p := testPolicy()
			p.AllowX509 = true
			_, err := reg.ValidateKeyPackage(bare, testDID, p)
			wantCode(t, err, mls.CodeInvalidKeyPackage)
			_, err = reg.ValidateKeyPackage(mlstest.MLSMessage(mls.WireFormatKeyPackage, bare), testDID, p)
			wantCode(t, err, mls.CodeInvalidKeyPackage)
		})
	}
}

// TestAcceptedVariants checks KeyPackages that must not be rejected.
func TestAcceptedVariants(t *testing.T) {
	reg := testRegistry(t)
	for name, modify := range map[string]func(*mls.KeyPackage){
		// The MLS working group vectors list application_id, a default
		// extension, in capabilities.extensions.
		"default extension listed in capabilities": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.Extensions = []uint16{0x0001, 0x0002}
		},
		"default leaf extension not listed": func(kp *mls.KeyPackage) {
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0x0001, Data: []byte("app")}}
		},
		"listed leaf extension": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.Extensions = []uint16{0xff02, 0xff01}
			kp.LeafNode.Extensions = []mls.Extension{{Type: 0xff01}, {Type: 0xff02, Data: []byte{1, 2}}}
		},
		// Like the MLS working group's vectors of suite 7.
		"cipher suite not in capabilities": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.CipherSuites = []uint16{1, 2, 3, 4, 5, 6}
		},
		"several credential types": func(kp *mls.KeyPackage) {
			kp.LeafNode.Capabilities.Credentials = []uint16{2, 1}
		},
		"unknown key package extension": func(kp *mls.KeyPackage) {
			kp.Extensions = []mls.Extension{{Type: 0xff00, Data: bytes.Repeat([]byte{7}, 100)}, {Type: 0x000a}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := reg.ValidateKeyPackage(makeKeyPackage(t, 1, modify), testDID, testPolicy()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLifetime(t *testing.T) {
	reg := testRegistry(t)
	sec := func(d time.Duration) uint64 { return uint64(testNow.Add(d).Unix()) }
	for _, tc := range []struct {
		name                string
		notBefore, notAfter uint64
		maxLifetime         time.Duration
		ok                  bool
	}{
		{"ended a second ago", sec(-2 * time.Hour), sec(-time.Second), testMaxLifetime, false},
		{"ends now", sec(-2 * time.Hour), sec(0), testMaxLifetime, true},
		{"starts within the skew", sec(time.Hour), sec(2 * time.Hour), testMaxLifetime, true},
		{"starts beyond the skew", sec(time.Hour + time.Second), sec(2 * time.Hour), testMaxLifetime, false},
		{"ends at the maximum lifetime", sec(0), sec(testMaxLifetime), testMaxLifetime, true},
		{"ends beyond the maximum lifetime", sec(0), sec(testMaxLifetime + time.Second), testMaxLifetime, false},
		{"unlimited lifetime", 0, ^uint64(0), 0, true},
		{"starts after it ends", sec(time.Minute), sec(-time.Minute), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bare := makeKeyPackage(t, 1, func(kp *mls.KeyPackage) {
				kp.LeafNode.Lifetime = &mls.Lifetime{NotBefore: tc.notBefore, NotAfter: tc.notAfter}
			})
			p := testPolicy()
			p.MaxLifetime = tc.maxLifetime
			_, err := reg.ValidateKeyPackage(bare, testDID, p)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCode(t, err, mls.CodeLifetimeInvalid)
		})
	}
}

func TestIdentity(t *testing.T) {
	reg := testRegistry(t)
	x509 := func(kp *mls.KeyPackage) {
		kp.LeafNode.Credential = mls.Credential{Type: mls.CredentialX509, Certificates: [][]byte{[]byte("leaf"), []byte("ca")}}
		kp.LeafNode.Capabilities.Credentials = []uint16{mls.CredentialX509}
	}
	identity := func(id string) func(*mls.KeyPackage) {
		return func(kp *mls.KeyPackage) { kp.LeafNode.Credential.Identity = []byte(id) }
	}
	for _, tc := range []struct {
		name   string
		modify func(*mls.KeyPackage)
		did    string
		policy func(*mls.Policy)
		ok     bool
	}{
		{"the DID itself", identity(testDID), testDID, nil, true},
		{"a device of the DID", identity(testDID + "#phone"), testDID, nil, true},
		{"empty fragment", identity(testDID + "#"), testDID, nil, true},
		{"another DID", identity("did:plc:otherotherother#dev"), testDID, nil, false},
		{"a longer DID", identity(testDID + "x#dev"), testDID, nil, false},
		{"a prefix of the DID", identity("did:plc:test"), testDID, nil, false},
		{"no DID given", identity("#dev"), "", nil, false},
		{"identity check off", identity("alice@example.org"), testDID, func(p *mls.Policy) { p.SkipIdentityCheck = true }, true},
		{"x509 refused", x509, testDID, nil, false},
		{"x509 refused without identity check", x509, testDID, func(p *mls.Policy) { p.SkipIdentityCheck = true }, false},
		{"x509 allowed", x509, testDID, func(p *mls.Policy) { p.AllowX509 = true }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy()
			if tc.policy != nil {
				tc.policy(&p)
			}
			v, err := reg.ValidateKeyPackage(makeKeyPackage(t, 1, tc.modify), tc.did, p)
			if !tc.ok {
				wantCode(t, err, mls.CodeIdentityMismatch)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c := v.KeyPackage.LeafNode.Credential; c.Type == mls.CredentialX509 && len(c.Certificates) != 2 {
				t.Errorf("certificates %q", c.Certificates)
			}
		})
	}
}

// TestCheckOrder checks which code wins when a KeyPackage has several faults.
func TestCheckOrder(t *testing.T) {
	reg := testRegistry(t)
	expired := func(kp *mls.KeyPackage) { kp.LeafNode.Lifetime.NotAfter = uint64(testNow.Add(-time.Minute).Unix()) }
	invalid := func(kp *mls.KeyPackage) { kp.LeafNode.EncryptionKey = kp.InitKey }
	unknownCredential := func(kp *mls.KeyPackage) { kp.LeafNode.Credential.Type = 9 }
	// badSignature flips a bit of the KeyPackage signature in place.
	badSignature := func(b []byte) []byte {
		kp, err := mls.ParseKeyPackage(b)
		if err != nil {
			t.Fatal(err)
		}
		kp.Signature[len(kp.Signature)-1] ^= 1
		return b
	}
	trailing := func(b []byte) []byte { return append(b, 0) }
	version2 := func(b []byte) []byte { b[1] = 2; return b }
	const otherDID = "did:plc:someoneelse"
	for _, tc := range []struct {
		name   string
		suite  mls.CipherSuite
		modify func(*mls.KeyPackage)
		bytes  func([]byte) []byte
		did    string
		want   mls.Code
	}{
		{"expired, other identity", 1, expired, nil, otherDID, mls.CodeLifetimeInvalid},
		{"bad signature, expired, other identity", 1, expired, badSignature, otherDID, mls.CodeBadSignature},
		{"invalid, bad signature", 1, invalid, badSignature, testDID, mls.CodeInvalidKeyPackage},
		{"unsupported suite, invalid", unknownSuiteID, invalid, nil, testDID, mls.CodeUnsupportedCipherSuite},
		{"unsupported suite, unknown credential", unknownSuiteID, unknownCredential, nil, testDID, mls.CodeUnsupportedCipherSuite},
		{"version, unknown credential", 1, unknownCredential, version2, testDID, mls.CodeUnsupportedVersion},
		{"version, unsupported suite", unknownSuiteID, nil, version2, testDID, mls.CodeUnsupportedVersion},
		{"malformed, version", 1, nil, func(b []byte) []byte { return trailing(version2(b)) }, testDID, mls.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := makeKeyPackage(t, tc.suite, tc.modify)
			if tc.bytes != nil {
				b = tc.bytes(b)
			}
			_, err := reg.ValidateKeyPackage(b, tc.did, testPolicy())
			wantCode(t, err, tc.want)
		})
	}
}

// TestSignatureSchemes makes and validates KeyPackages of every signature
// algorithm, then breaks each signature and the signature key.
func TestSignatureSchemes(t *testing.T) {
	reg := testRegistry(t)
	for _, suite := range reg.Suites() {
		t.Run(fmt.Sprintf("suite=%d/%s", suite.ID, suite.Signature), func(t *testing.T) {
			bare := makeKeyPackage(t, suite.ID, nil)
			v, err := reg.ValidateKeyPackage(bare, testDID, testPolicy())
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Ref) != suite.Hash.Size() {
				t.Errorf("ref of %d bytes, want %d", len(v.Ref), suite.Hash.Size())
			}

			for _, field := range []string{"key_package.leaf_node.signature", "key_package.signature"} {
				b := bytes.Clone(bare)
				kp, err := mls.ParseKeyPackage(b)
				if err != nil {
					t.Fatal(err)
				}
				sig := kp.Signature
				if field == "key_package.leaf_node.signature" {
					sig = kp.LeafNode.Signature
				}
				sig[len(sig)/2] ^= 0x10
				_, err = reg.ValidateKeyPackage(b, testDID, testPolicy())
				if e := wantCode(t, err, mls.CodeBadSignature); e.Field != field {
					t.Errorf("field = %q, want %q", e.Field, field)
				}
			}

			for name, key := range map[string]func([]byte) []byte{
				"empty":       func([]byte) []byte { return nil },
				"short":       func(k []byte) []byte { return k[:len(k)-1] },
				"long":        func(k []byte) []byte { return append(bytes.Clone(k), 0) },
				"first byte":  func(k []byte) []byte { k = bytes.Clone(k); k[0] ^= 0x05; return k },
				"other field": func(k []byte) []byte { return bytes.Repeat([]byte{0xff}, len(k)) },
			} {
				t.Run("key="+name, func(t *testing.T) {
					b := makeKeyPackage(t, suite.ID, func(kp *mls.KeyPackage) {
						kp.LeafNode.SignatureKey = key(kp.LeafNode.SignatureKey)
					})
					_, err := reg.ValidateKeyPackage(b, testDID, testPolicy())
					wantCode(t, err, mls.CodeBadSignature)
				})
			}
		})
	}
}

func TestVerifySignaturesMisuse(t *testing.T) {
	reg := testRegistry(t)
	kp, err := mls.ParseKeyPackage(makeKeyPackage(t, 1, nil))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := reg.Lookup(2)
	wantCode(t, kp.VerifySignatures(other), mls.CodeUnsupportedCipherSuite)

	suite, _ := reg.Lookup(1)
	wantCode(t, (&mls.KeyPackage{CipherSuite: 1, LeafNode: mls.LeafNode{Source: mls.SourceKeyPackage}}).VerifySignatures(suite), mls.CodeMalformed)

	update, err := mls.ParseKeyPackage(makeKeyPackage(t, 1, func(kp *mls.KeyPackage) {
		kp.LeafNode.Source, kp.LeafNode.Lifetime = mls.SourceUpdate, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, update.VerifySignatures(suite), mls.CodeInvalidKeyPackage)
}
