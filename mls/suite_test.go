package mls_test

import (
	"crypto"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/mls"
)

func TestBuiltinSuites(t *testing.T) {
	want := []mls.Suite{
		{ID: 1, Name: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", Hash: crypto.SHA256, Signature: "ed25519"},
		{ID: 2, Name: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256", Hash: crypto.SHA256, Signature: "p256"},
		{ID: 3, Name: "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519", Hash: crypto.SHA256, Signature: "ed25519"},
		{ID: 4, Name: "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448", Hash: crypto.SHA512, Signature: "ed448"},
		{ID: 5, Name: "MLS_256_DHKEMP521_AES256GCM_SHA512_P521", Hash: crypto.SHA512, Signature: "p521"},
		{ID: 6, Name: "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448", Hash: crypto.SHA512, Signature: "ed448"},
		{ID: 7, Name: "MLS_256_DHKEMP384_AES256GCM_SHA384_P384", Hash: crypto.SHA384, Signature: "p384"},
	}
	r := mls.NewRegistry()
	if got := r.Suites(); !slices.Equal(got, want) {
		t.Fatalf("Suites() = %v", got)
	}
	for _, s := range want {
		if got, ok := r.Lookup(s.ID); !ok || got != s {
			t.Errorf("Lookup(%d) = %v, %v", s.ID, got, ok)
		}
		if got, ok := r.ByName(s.Name); !ok || got != s {
			t.Errorf("ByName(%q) = %v, %v", s.Name, got, ok)
		}
	}
	if got, ok := r.ByName("mls_128_dhkemx25519_aes128gcm_sha256_ed25519"); !ok || got.ID != 1 {
		t.Errorf("ByName is case-sensitive: %v, %v", got, ok)
	}
	for _, id := range []mls.CipherSuite{0, 8, 0x53, 0xffff} {
		if _, ok := r.Lookup(id); ok {
			t.Errorf("Lookup(%d) found a suite", id)
		}
	}
	if _, ok := r.ByName("MLS_128_MLKEM512_AES128GCM_SHA256_Ed25519"); ok {
		t.Error("ByName found an unconfigured suite")
	}
}

func TestRegistryAdd(t *testing.T) {
	r := mls.NewRegistry()
	for _, tc := range []struct {
		spec string
		want mls.Suite
	}{
		{"0x0053=sha512:ed25519", mls.Suite{ID: 0x53, Name: "0x0053", Hash: crypto.SHA512, Signature: "ed25519"}},
		{"77=SHA256:Ed25519", mls.Suite{ID: 77, Name: "0x004D", Hash: crypto.SHA256, Signature: "ed25519"}},
		{" 0XF001 = sha512 : MLDSA87 ", mls.Suite{ID: 0xf001, Name: "0xF001", Hash: crypto.SHA512, Signature: "mldsa87"}},
		{"010=sha384:p384", mls.Suite{ID: 10, Name: "0x000A", Hash: crypto.SHA384, Signature: "p384"}},
		{"65535=sha256:p256", mls.Suite{ID: 0xffff, Name: "0xFFFF", Hash: crypto.SHA256, Signature: "p256"}},
		{"0x0100=sha512:p521", mls.Suite{ID: 0x100, Name: "0x0100", Hash: crypto.SHA512, Signature: "p521"}},
		{"0x0101=sha512:ed448", mls.Suite{ID: 0x101, Name: "0x0101", Hash: crypto.SHA512, Signature: "ed448"}},
	} {
		if err := r.Add(tc.spec); err != nil {
			t.Errorf("Add(%q): %v", tc.spec, err)
			continue
		}
		if got, ok := r.Lookup(tc.want.ID); !ok || got != tc.want {
			t.Errorf("after Add(%q): Lookup = %+v, want %+v", tc.spec, got, tc.want)
		}
		if got, ok := r.ByName(tc.want.Name); !ok || got != tc.want {
			t.Errorf("ByName(%q) = %+v, %v", tc.want.Name, got, ok)
		}
	}
	if got, ok := r.ByName("0x004d"); !ok || got.ID != 77 {
		t.Errorf("ByName(0x004d) = %v, %v", got, ok)
	}
	ids := []mls.CipherSuite{}
	for _, s := range r.Suites() {
		ids = append(ids, s.ID)
	}
	if want := []mls.CipherSuite{1, 2, 3, 4, 5, 6, 7, 10, 77, 0x53, 0x100, 0x101, 0xf001, 0xffff}; !slices.Equal(ids, slices.Sorted(slices.Values(want))) || !slices.IsSorted(ids) {
		t.Errorf("Suites() IDs = %v", ids)
	}

	// Same definition again: a no-op.
	for _, spec := range []string{"0x53=SHA512:ed25519", "1=sha256:ed25519", "7=sha384:p384"} {
		if err := r.Add(spec); err != nil {
			t.Errorf("Add(%q): %v", spec, err)
		}
	}
	for _, spec := range []string{
		"", "53", "53=", "53=sha512", "=sha512:ed25519", "0x=sha256:ed25519", "0=sha256:ed25519",
		"65536=sha256:ed25519", "0x10000=sha256:ed25519", "-1=sha256:ed25519", "1e3=sha256:ed25519",
		"53=md5:ed25519", "53=sha512:rsa", "53=sha512:", "0x0053=sha256:ed25519", "1=sha512:ed25519", "2=sha256:ed25519",
	} {
		if err := r.Add(spec); err == nil {
			t.Errorf("Add(%q) succeeded", spec)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", spec)) {
			t.Errorf("Add(%q) error %q does not quote the spec", spec, err)
		}
	}
	if got, _ := r.Lookup(0x53); got.Hash != crypto.SHA512 {
		t.Error("a failed Add changed a suite")
	}
}

// TestRegistryConcurrentReads validates from many goroutines at once (run
// with -race).
func TestRegistryConcurrentReads(t *testing.T) {
	f := testkit.Fixtures(t)
	reg := mls.FixtureRegistry(t, f)
	var wg sync.WaitGroup
	for _, fs := range f.Suites {
		k := fs.KeyPackages["alice_dev1"]
		wg.Go(func() {
			for range 5 {
				if _, err := reg.ValidateKeyPackage(k.Message, mls.AliceDID, mls.FixturePolicy(k.Now())); err != nil {
					t.Error(err)
				}
				reg.Suites()
				reg.ByName(fs.Name)
			}
		})
	}
	wg.Wait()
}

func TestZeroRegistry(t *testing.T) {
	var r mls.Registry
	if _, ok := r.Lookup(1); ok || len(r.Suites()) != 0 {
		t.Fatal("the zero Registry is not empty")
	}
	if err := r.Add("0x53=sha256:ed25519"); err != nil {
		t.Fatal(err)
	}
	if s, ok := r.Lookup(0x53); !ok || s.Signature != "ed25519" {
		t.Errorf("Lookup(0x53) = %v, %v", s, ok)
	}
}
