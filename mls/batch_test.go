package mls_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// batchItems returns KeyPackages for testDID that exercise every path of
// ValidateKeyPackages: valid ones of two Ed25519 suites (some sharing a
// signature key), one of a suite that is not batched (P-256), and items
// that fail before, at and after the signature checks, alone or together.
// Items named "bad" have a broken signature.
func batchItems(t *testing.T, withBad bool) (names []string, items [][]byte) {
	t.Helper()
	reg := testRegistry(t)
	suite1, _ := reg.Lookup(1)
	shared, err := mlstest.NewSigner(suite1)
	if err != nil {
		t.Fatal(err)
	}
	add := func(name string, b []byte) {
		names = append(names, name)
		items = append(items, b)
	}
	signed := func(s *mlstest.Signer) []byte {
		b, _, err := mlstest.KeyPackage(suite1, mlstest.Options{
			Identity: testDID + "#dev", NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(24 * time.Hour), Signer: s,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	flip := func(b []byte, leaf bool) []byte {
		b = bytes.Clone(b)
		kp, err := mls.ParseKeyPackage(b)
		if err != nil {
			t.Fatal(err)
		}
		sig := kp.Signature
		if leaf {
			sig = kp.LeafNode.Signature
		}
		sig[3] ^= 0x40
		return b
	}
	expired := func(kp *mls.KeyPackage) { kp.LeafNode.Lifetime.NotAfter = uint64(testNow.Add(-time.Minute).Unix()) }

	for i := range 4 {
		add(fmt.Sprintf("valid, shared key %d", i), signed(shared))
	}
	add("valid, own key", signed(nil))
	add("valid, suite 3", makeKeyPackage(t, 3, nil))
	add("valid, suite 2 (P-256)", makeKeyPackage(t, 2, nil))
	add("malformed", append(signed(shared), 0))
	add("invalid", makeKeyPackage(t, 1, func(kp *mls.KeyPackage) { kp.LeafNode.EncryptionKey = kp.InitKey }))
	add("expired", makeKeyPackage(t, 1, expired))
	add("other identity", makeKeyPackage(t, 1, func(kp *mls.KeyPackage) {
		kp.LeafNode.Credential.Identity = []byte("did:plc:someoneelse#dev")
	}))
	add("bad, expired", flip(makeKeyPackage(t, 1, expired), false))
	if withBad {
		add("bad leaf signature", flip(signed(shared), true))
		add("bad KeyPackage signature", flip(signed(nil), false))
		add("bad, suite 2", flip(makeKeyPackage(t, 2, nil), false))
	}
	add("valid, last", signed(shared))
	return names, items
}

// TestValidateKeyPackagesAgrees checks that validating a batch together
// gives, item by item, what ValidateKeyPackage gives: when every signature
// verifies (the batch holds) and when some do not (it is redone one by one).
func TestValidateKeyPackagesAgrees(t *testing.T) {
	reg := testRegistry(t)
	for _, withBad := range []bool{false, true} {
		t.Run(fmt.Sprintf("bad signatures=%v", withBad), func(t *testing.T) {
			names, items := batchItems(t, withBad)
			vs, errs := reg.ValidateKeyPackages(items, testDID, testPolicy())
			if len(vs) != len(items) || len(errs) != len(items) {
				t.Fatalf("%d results and %d errors for %d items", len(vs), len(errs), len(items))
			}
			valid := 0
			for i, b := range items {
				want, wantErr := reg.ValidateKeyPackage(b, testDID, testPolicy())
				switch {
				case wantErr != nil:
					if errs[i] == nil || errs[i].Error() != wantErr.Error() {
						t.Errorf("%s: error %v, want %v", names[i], errs[i], wantErr)
					}
					if vs[i] != nil {
						t.Errorf("%s: a result beside the error", names[i])
					}
				case errs[i] != nil:
					t.Errorf("%s: error %v, want none", names[i], errs[i])
				case !bytes.Equal(vs[i].Ref, want.Ref) || vs[i].Suite.ID != want.Suite.ID || !vs[i].NotAfter.Equal(want.NotAfter):
					t.Errorf("%s: got ref %x suite %d, want %x suite %d", names[i], vs[i].Ref, vs[i].Suite.ID, want.Ref, want.Suite.ID)
				default:
					valid++
				}
				wantBad := len(names[i]) > 3 && names[i][:3] == "bad"
				if isBad := wantErr != nil && wantCodeOf(wantErr) == mls.CodeBadSignature; isBad != wantBad {
					t.Errorf("%s: ValidateKeyPackage gives %v", names[i], wantErr)
				}
			}
			if valid != 8 {
				t.Errorf("%d valid KeyPackages, want 8", valid)
			}
		})
	}
	vs, errs := reg.ValidateKeyPackages(nil, testDID, testPolicy())
	if len(vs) != 0 || len(errs) != 0 {
		t.Errorf("empty batch: %v, %v", vs, errs)
	}
}

func wantCodeOf(err error) mls.Code {
	if e, ok := err.(*mls.Error); ok {
		return e.Code
	}
	return ""
}
