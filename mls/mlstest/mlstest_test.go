package mlstest_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

var now = time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)

const did = "did:web:example.org"

// registry has every signature algorithm: suites 1-7 and ML-DSA-87.
func registry(t testing.TB) *mls.Registry {
	t.Helper()
	r := mls.NewRegistry()
	if err := r.Add("0xF001=sha512:mldsa87"); err != nil {
		t.Fatal(err)
	}
	return r
}

func policy() mls.Policy {
	return mls.Policy{Now: now, MaxLifetime: mls.DefaultMaxLifetime, ClockSkew: mls.DefaultClockSkew}
}

func TestKeyPackageEverySuite(t *testing.T) {
	reg := registry(t)
	for _, s := range reg.Suites() {
		t.Run(fmt.Sprintf("suite=%d/%s", s.ID, s.Signature), func(t *testing.T) {
			signer, err := mlstest.NewSigner(s)
			if err != nil {
				t.Fatal(err)
			}
			opts := mlstest.Options{
				Identity:  did + "#laptop",
				NotBefore: now.Add(-time.Minute),
				NotAfter:  now.Add(48 * time.Hour),
				Signer:    signer,
			}
			bare, ref, err := mlstest.KeyPackage(s, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range [][]byte{bare, mlstest.MLSMessage(mls.WireFormatKeyPackage, bare)} {
				v, err := reg.ValidateKeyPackage(b, did, policy())
				if err != nil {
					t.Fatalf("ValidateKeyPackage: %v", err)
				}
				if !bytes.Equal(v.Ref, ref) || v.LastResort || v.Suite != s {
					t.Errorf("ref %x last resort %v suite %v; want %x false %v", v.Ref, v.LastResort, v.Suite, ref, s)
				}
				if !v.NotBefore.Equal(opts.NotBefore) || !v.NotAfter.Equal(opts.NotAfter) {
					t.Errorf("lifetime [%v, %v]", v.NotBefore, v.NotAfter)
				}
				ln := v.KeyPackage.LeafNode
				if !bytes.Equal(ln.SignatureKey, signer.PublicKey()) || bytes.Equal(ln.EncryptionKey, v.KeyPackage.InitKey) {
					t.Error("wrong signature key, or init_key equals encryption_key")
				}
			}

			// The same signer again: same signature key, another KeyPackage.
			opts.LastResort = true
			bare2, ref2, err := mlstest.KeyPackage(s, opts)
			if err != nil {
				t.Fatal(err)
			}
			v, err := reg.ValidateKeyPackage(bare2, did, policy())
			if err != nil {
				t.Fatal(err)
			}
			if !v.LastResort || bytes.Equal(ref, ref2) {
				t.Errorf("last resort %v, same ref %v", v.LastResort, bytes.Equal(ref, ref2))
			}

			welcome, err := mlstest.Welcome(s, ref, ref2)
			if err != nil {
				t.Fatal(err)
			}
			w, ws, err := reg.ValidateWelcome(welcome)
			if err != nil {
				t.Fatalf("ValidateWelcome: %v", err)
			}
			members := w.NewMembers()
			if ws != s || len(members) != 2 || !bytes.Equal(members[0], ref) || !bytes.Equal(members[1], ref2) {
				t.Errorf("Welcome of suite %d names %x", ws.ID, members)
			}
			if !bytes.Equal(welcome[:4], []byte{0, 1, 0, 3}) {
				t.Errorf("Welcome header %x, want an MLSMessage(mls_welcome)", welcome[:4])
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	reg := registry(t)
	s, _ := reg.Lookup(1)
	bare, ref, err := mlstest.KeyPackage(s, mlstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The default lifetime is relative to the wall clock.
	p := policy()
	p.Now = time.Now()
	v, err := reg.ValidateKeyPackage(bare, "did:plc:mlstestmlstestmlstest", p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v.Ref, ref) || string(v.KeyPackage.LeafNode.Credential.Identity) != mlstest.DefaultIdentity {
		t.Errorf("ref %x identity %q", v.Ref, v.KeyPackage.LeafNode.Credential.Identity)
	}
}

func TestModify(t *testing.T) {
	reg := registry(t)
	s, _ := reg.Lookup(1)
	bare, _, err := mlstest.KeyPackage(s, mlstest.Options{
		Identity: did, NotBefore: now, NotAfter: now.Add(time.Hour),
		Modify: func(kp *mls.KeyPackage) { kp.LeafNode.EncryptionKey = kp.InitKey },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = reg.ValidateKeyPackage(bare, did, policy())
	if e := (*mls.Error)(nil); !errors.As(err, &e) || e.Code != mls.CodeInvalidKeyPackage {
		t.Errorf("error %v, want InvalidKeyPackage", err)
	}
}

func TestErrors(t *testing.T) {
	s := mls.Suite{ID: 0x99, Signature: "rsa"}
	if _, err := mlstest.NewSigner(s); err == nil {
		t.Error("NewSigner accepted an unknown signature algorithm")
	}
	if _, _, err := mlstest.KeyPackage(s, mlstest.Options{}); err == nil {
		t.Error("KeyPackage accepted an unknown signature algorithm")
	}
	s1, _ := mls.NewRegistry().Lookup(1)
	if _, err := mlstest.Welcome(s1); err == nil {
		t.Error("Welcome without new members")
	}
	if _, err := mlstest.Welcome(s1, make([]byte, 32), make([]byte, 20)); err == nil {
		t.Error("Welcome with a 20-byte ref")
	}
}

// TestManyDistinct makes 1,000 Ed25519 KeyPackages and checks that they
// are distinct and quick to make.
func TestManyDistinct(t *testing.T) {
	s, _ := mls.NewRegistry().Lookup(1)
	seen := map[string]bool{}
	start := time.Now()
	for range 1000 {
		_, ref, err := mlstest.KeyPackage(s, mlstest.Options{NotBefore: now, NotAfter: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		seen[string(ref)] = true
	}
	elapsed := time.Since(start)
	if len(seen) != 1000 {
		t.Errorf("%d distinct refs of 1000", len(seen))
	}
	// Well under a second without the race detector; leave room for it.
	if elapsed > 5*time.Second {
		t.Errorf("1000 KeyPackages took %v", elapsed)
	}
	t.Logf("1000 Ed25519 KeyPackages in %v", elapsed)
}

func BenchmarkKeyPackage(b *testing.B) {
	reg := registry(b)
	for _, s := range reg.Suites() {
		b.Run(fmt.Sprintf("suite=%d", s.ID), func(b *testing.B) {
			signer, err := mlstest.NewSigner(s)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, _, err := mlstest.KeyPackage(s, mlstest.Options{Signer: signer}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	s, _ := reg.Lookup(1)
	b.Run("suite=1/new-signer", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := mlstest.KeyPackage(s, mlstest.Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
