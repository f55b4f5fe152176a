package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// Example runs a kpd server in dev mode (Bearer <did>) on a temporary
// database and walks through the life of a KeyPackage: Alice's phone
// publishes one, Bob claims it to add the phone to a group, posts the
// Welcome, and the phone fetches and acknowledges it.
func Example() {
	ctx := context.Background()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }

	dir, err := os.MkdirTemp("", "kpd-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := kv.Open(filepath.Join(dir, "kpd.db"), &kv.Options{Clock: clock})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	registry := mls.NewRegistry()
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Store:    db,
		Auth:     auth.NewDevAuth(),
		Registry: registry,
		Policy:   httpapi.Policy{MaxLifetime: mls.DefaultMaxLifetime, ClockSkew: mls.DefaultClockSkew},
		Clock:    clock,
		Logger:   zerolog.Nop(),
	}))
	defer srv.Close()

	const alice, bob = "did:plc:alice", "did:plc:bob"
	phone := client.New(srv.URL, alice)
	adder := client.New(srv.URL, bob)

	// Alice's phone publishes a KeyPackage (made here with mlstest).
	suite, _ := registry.Lookup(1)
	kp, _, err := mlstest.KeyPackage(suite, mlstest.Options{
		Identity: alice + "#phone", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
	})
	if err != nil {
		log.Fatal(err)
	}
	pub, err := phone.Publish(ctx, "phone", [][]byte{kp})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published:", pub.Results[0].Status, "available:", pub.Inventory.Suites[0].Available)

	// Bob claims one KeyPackage of each of Alice's devices.
	claim, err := adder.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}})
	if err != nil {
		log.Fatal(err)
	}
	got := claim.KeyPackages[0]
	fmt.Println("claimed from device:", got.Device)

	// Bob adds the phone to a group and posts the Welcome.
	ref, _ := got.Ref.Bytes()
	welcome, err := mlstest.Welcome(suite, ref)
	if err != nil {
		log.Fatal(err)
	}
	posted, err := adder.PostWelcome(ctx, "team-chat", welcome)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("welcome created:", posted.Created, "for:", posted.Recipients[0].Device)

	// The phone fetches its pending Welcomes and acknowledges each.
	pending, err := phone.Welcomes(ctx, "phone", client.ListOptions{})
	if err != nil {
		log.Fatal(err)
	}
	for _, w := range pending {
		ack, err := phone.Ack(ctx, "phone", w.WelcomeID)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("joined", w.ConvoID, "from", w.Sender, "at", ack.ConsumedAt.Format(time.RFC3339))
	}

	// Claiming again finds the phone's pool empty.
	claim, err = adder.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("missing:", claim.Missing[0].Device, claim.Missing[0].Reason)

	// Output:
	// published: stored available: 1
	// claimed from device: phone
	// welcome created: true for: phone
	// joined team-chat from did:plc:bob at 2026-11-27T12:00:00Z
	// missing: phone Exhausted
}
