package mls_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/mls"
)

// fixtureKeyPackage returns a KeyPackage of suite 1 from the ts-mls
// fixtures, as an MLSMessage.
func fixtureKeyPackage(name string) []byte {
	f, err := testkit.Load()
	if err != nil {
		panic(err)
	}
	return f.Suites[0].KeyPackages[name].Message
}

func ExampleParseKeyPackage() {
	kp, err := mls.ParseKeyPackage(fixtureKeyPackage("alice_dev1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	suite, _ := mls.NewRegistry().Lookup(kp.CipherSuite)
	fmt.Println("suite:", suite.Name)
	fmt.Println("identity:", string(kp.LeafNode.Credential.Identity))
	fmt.Println("ref:", hex.EncodeToString(kp.Ref(suite)))
	fmt.Println("signatures:", kp.VerifySignatures(suite))
	// Output:
	// suite: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	// identity: did:plc:ewvi7nxzyoun6zhxrhs64oiz#dev1
	// ref: 55b3242d5b70f59bf10f4d8d4574419d07bc8e259bf1afe9210fc601904cf1b3
	// signatures: <nil>
}

func ExampleRegistry_ValidateKeyPackage() {
	reg := mls.NewRegistry()
	// Other suites are configured with Add, e.g. reg.Add("0x0053=sha512:ed25519").
	policy := mls.Policy{
		Now:         time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC),
		MaxLifetime: mls.DefaultMaxLifetime,
		ClockSkew:   mls.DefaultClockSkew,
	}
	const did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"

	v, err := reg.ValidateKeyPackage(fixtureKeyPackage("alice_last_resort"), did, policy)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("ref %x…, last resort %v, valid until %s\n", v.Ref[:4], v.LastResort, v.NotAfter.Format(time.RFC3339))

	for _, name := range []string{"alice_expired", "bob"} {
		_, err := reg.ValidateKeyPackage(fixtureKeyPackage(name), did, policy)
		var e *mls.Error
		if errors.As(err, &e) {
			fmt.Printf("%s: %s (%s)\n", name, e.Code, e.Field)
		}
	}
	// Output:
	// ref 1bc9b957…, last resort true, valid until 2027-02-25T00:42:04Z
	// alice_expired: LifetimeInvalid (key_package.leaf_node.lifetime.not_after)
	// bob: IdentityMismatch (key_package.leaf_node.credential.identity)
}

func ExampleParseWelcome() {
	f, err := testkit.Load()
	if err != nil {
		fmt.Println(err)
		return
	}
	w, err := mls.ParseWelcome(f.Suites[0].Welcome.Message)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, ref := range w.NewMembers() {
		fmt.Printf("new member %x\n", ref)
	}
	// Output:
	// new member 55b3242d5b70f59bf10f4d8d4574419d07bc8e259bf1afe9210fc601904cf1b3
	// new member b6c1aedfb7d3c8e9a694e800e1ce9ba7bf947ccf47abe8cc83d9211715381e7a
}
