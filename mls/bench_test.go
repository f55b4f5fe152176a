package mls_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// BenchmarkValidate measures ValidateKeyPackage (decode, checks, both
// signatures, ref) of an MLSMessage-framed KeyPackage per suite.
func BenchmarkValidate(b *testing.B) {
	f := testkit.Fixtures(b)
	reg := mls.FixtureRegistry(b, f)
	for _, fs := range f.Suites {
		k := fs.KeyPackages["alice_dev1"]
		policy := mls.FixturePolicy(k.Now())
		b.Run(fmt.Sprintf("suite=%d", fs.ID), func(b *testing.B) {
			b.SetBytes(int64(len(k.Message)))
			for b.Loop() {
				if _, err := reg.ValidateKeyPackage(k.Message, mls.AliceDID, policy); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("suite=0xF001-mldsa87", func(b *testing.B) {
		kp := makeKeyPackage(b, mldsaSuite, nil)
		reg := testRegistry(b)
		b.SetBytes(int64(len(kp)))
		for b.Loop() {
			if _, err := reg.ValidateKeyPackage(kp, testDID, testPolicy()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkParse measures decoding alone.
func BenchmarkParse(b *testing.B) {
	f := testkit.Fixtures(b)
	for _, fs := range f.Suites {
		k := fs.KeyPackages["alice_dev1"]
		b.Run(fmt.Sprintf("keypackage/suite=%d", fs.ID), func(b *testing.B) {
			b.SetBytes(int64(len(k.Message)))
			for b.Loop() {
				if _, err := mls.ParseKeyPackage(k.Message); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	w := f.Suites[0].Welcome.Message
	b.Run("welcome", func(b *testing.B) {
		b.SetBytes(int64(len(w)))
		for b.Loop() {
			if _, err := mls.ParseWelcome(w); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkValidateBatch compares a publish batch of 50 suite-1 KeyPackages
// validated one by one (ValidateKeyPackage) with the same batch validated
// together (ValidateKeyPackages, one batch verification of its Ed25519
// signatures). A device signs its KeyPackages with one key, as in
// "one-by-one" and "together"; "together, a key each" is the batch's worst
// case, 50 keys. The per-KeyPackage time is reported as µs/keypackage.
func BenchmarkValidateBatch(b *testing.B) {
	const n = 50
	reg := testRegistry(b)
	suite1, _ := reg.Lookup(1)
	signer, err := mlstest.NewSigner(suite1)
	if err != nil {
		b.Fatal(err)
	}
	device := make([][]byte, n)
	own := make([][]byte, n)
	for i := range n {
		device[i], _, err = mlstest.KeyPackage(suite1, mlstest.Options{
			Identity: testDID + "#dev", NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(24 * time.Hour), Signer: signer,
		})
		if err != nil {
			b.Fatal(err)
		}
		own[i] = makeKeyPackage(b, 1, nil)
	}
	perKP := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/keypackage")
	}
	b.Run("one-by-one", func(b *testing.B) {
		for b.Loop() {
			for _, kp := range device {
				if _, err := reg.ValidateKeyPackage(kp, testDID, testPolicy()); err != nil {
					b.Fatal(err)
				}
			}
		}
		perKP(b)
	})
	for _, c := range []struct {
		name  string
		items [][]byte
	}{{"together", device}, {"together, a key each", own}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				_, errs := reg.ValidateKeyPackages(c.items, testDID, testPolicy())
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			perKP(b)
		})
	}
}
