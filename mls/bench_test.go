package mls_test

import (
	"fmt"
	"testing"

	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/mls"
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
