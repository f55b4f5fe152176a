package httpapi_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
)

// TestSection1Scenario is SPEC section 1's failure, which kpd must not
// repeat: device A publishes #1, bob claims it, A publishes #2 and device B
// publishes too; bob's Welcome made with #1 reaches A (and only A), and
// acknowledging it consumes #1 and nothing else.
func TestSection1Scenario(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	fx := fixture(t, 1)
	kp1, kpB := fx.KeyPackages["alice_dev1"], fx.KeyPackages["alice_dev2"]
	a, b := s.as(alice), s.as(bob)

	pub := must(a.Publish(ctx, "devA", [][]byte{kp1.Message}))(t)
	if len(pub.Results) != 1 || pub.Results[0].Ref != kp1.Ref() || pub.Results[0].Status != kpd.PublishStored {
		t.Fatalf("publish #1: results = %+v, want %s stored", pub.Results, kp1.Ref())
	}
	if len(pub.Inventory.Suites) != 1 || pub.Inventory.Suites[0].Available != 1 {
		t.Fatalf("inventory after #1 = %+v", pub.Inventory)
	}

	claim := must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	if len(claim.KeyPackages) != 1 || len(claim.Missing) != 0 {
		t.Fatalf("bob's claim = %+v, want one KeyPackage", claim)
	}
	got := claim.KeyPackages[0]
	if got.Ref != kp1.Ref() || got.DID != alice || got.Device != "devA" || !bytes.Equal(got.KeyPackage, kp1.Message) {
		t.Fatalf("bob claimed %s of %s/%s, want #1 %s of devA as published", got.Ref, got.DID, got.Device, kp1.Ref())
	}

	kp2, ref2 := s.keyPackage(1, alice+"#devA", false)
	must(a.Publish(ctx, "devA", [][]byte{kp2}))(t)
	must(a.Publish(ctx, "devB", [][]byte{kpB.Bare}))(t)

	w := s.welcome(s.suite(1), kp1.Ref())
	posted := must(b.PostWelcome(ctx, "convo-1", w))(t)
	if !posted.Created || len(posted.Rejected) != 0 || len(posted.Recipients) != 1 {
		t.Fatalf("post welcome = %+v", posted)
	}
	if r := posted.Recipients[0]; r.DID != alice || r.Device != "devA" || r.Ref != kp1.Ref() || r.Status != kpd.DeliveryPending {
		t.Fatalf("recipient = %+v, want alice/devA %s pending", r, kp1.Ref())
	}

	pendingA := must(a.Welcomes(ctx, "devA", client.ListOptions{}))(t)
	if len(pendingA) != 1 || pendingA[0].WelcomeID != posted.WelcomeID || pendingA[0].Ref != kp1.Ref() ||
		pendingA[0].Sender != bob || pendingA[0].ConvoID != "convo-1" || !bytes.Equal(pendingA[0].Welcome, w) {
		t.Fatalf("devA's welcomes = %+v", pendingA)
	}
	if pendingB := must(a.Welcomes(ctx, "devB", client.ListOptions{}))(t); len(pendingB) != 0 {
		t.Fatalf("devB sees %d welcomes, want none", len(pendingB))
	}

	ack := must(a.Ack(ctx, "devA", posted.WelcomeID))(t)
	if ack.Ref != kp1.Ref() || !ack.ConsumedAt.Equal(s.now) {
		t.Fatalf("ack = %+v, want %s consumed at %v", ack, kp1.Ref(), s.now)
	}
	if again := must(a.Ack(ctx, "devA", posted.WelcomeID))(t); again.Ref != kp1.Ref() {
		t.Fatalf("second ack = %+v", again)
	}

	invA := must(a.Inventory(ctx, "devA", true))(t)
	states := map[kpd.Ref]kpd.KeyPackageState{}
	for _, k := range invA.KeyPackages {
		states[k.Ref] = k.State
	}
	if len(states) != 2 || states[kp1.Ref()] != kpd.StateConsumed || states[ref2] != kpd.StateAvailable {
		t.Fatalf("devA's KeyPackages = %v, want #1 consumed and #2 available", states)
	}
	invB := must(a.Inventory(ctx, "devB", true))(t)
	if len(invB.KeyPackages) != 1 || invB.KeyPackages[0].Ref != kpB.Ref() || invB.KeyPackages[0].State != kpd.StateAvailable {
		t.Fatalf("devB's KeyPackages = %+v, want its one available", invB.KeyPackages)
	}
	if len(must(a.Welcomes(ctx, "devA", client.ListOptions{}))(t)) != 0 {
		t.Fatal("the acked Welcome is still pending")
	}
	st := must(b.WelcomeStatus(ctx, posted.WelcomeID))(t)
	if len(st.Recipients) != 1 || st.Recipients[0].Status != kpd.DeliveryAcked || st.ConvoID != "convo-1" {
		t.Fatalf("status = %+v, want one acked recipient", st)
	}
}

// TestFixtureWelcome posts the fixtures' real Welcome, which adds
// alice_dev1 and alice_dev2 in one commit, for every suite: each device
// gets it, each acks, and the sender sees both acked.
func TestFixtureWelcome(t *testing.T) {
	s := start(t, func(o *options) { o.suites = extraSuites })
	ctx := context.Background()
	a, b := s.as(alice), s.as(bob)
	for _, id := range []uint16{1, 2, 3, 4, 5, 6, 7, 77, 83} {
		t.Run(fmt.Sprint(id), func(t *testing.T) {
			fx := fixture(t, id)
			dev1, dev2 := fx.KeyPackages["alice_dev1"], fx.KeyPackages["alice_dev2"]
			devices := map[kpd.Ref]string{dev1.Ref(): fmt.Sprintf("s%d-dev1", id), dev2.Ref(): fmt.Sprintf("s%d-dev2", id)}
			must(a.Publish(ctx, devices[dev1.Ref()], [][]byte{dev1.Message}))(t)
			must(a.Publish(ctx, devices[dev2.Ref()], [][]byte{dev2.Bare}))(t)

			claim := must(b.Claim(ctx, client.ClaimRequest{
				CipherSuite: id,
				Targets:     []kpd.ClaimTarget{{DID: alice, Devices: []string{devices[dev1.Ref()], devices[dev2.Ref()]}}},
			}))(t)
			if len(claim.KeyPackages) != 2 {
				t.Fatalf("claim = %+v, want both devices", claim)
			}
			for _, k := range claim.KeyPackages {
				if devices[k.Ref] != k.Device || k.CipherSuite != id {
					t.Fatalf("claimed %s from %s (suite %d)", k.Ref, k.Device, k.CipherSuite)
				}
			}

			posted := must(b.PostWelcome(ctx, "fixture", fx.Welcome.Message))(t)
			if !posted.Created || len(posted.Recipients) != 2 || len(posted.Rejected) != 0 {
				t.Fatalf("post = %+v", posted)
			}
			for _, r := range posted.Recipients {
				if devices[r.Ref] != r.Device {
					t.Fatalf("recipient %+v routed to the wrong device", r)
				}
			}
			again := must(b.PostWelcome(ctx, "fixture", fx.Welcome.Message))(t)
			if again.Created || again.WelcomeID != posted.WelcomeID {
				t.Fatalf("repeated post = %+v, want the same welcome_id, not created", again)
			}

			for ref, device := range devices {
				list := must(a.Welcomes(ctx, device, client.ListOptions{}))(t)
				if len(list) != 1 || list[0].Ref != ref || !bytes.Equal(list[0].Welcome, fx.Welcome.Message) {
					t.Fatalf("%s's welcomes = %+v", device, list)
				}
				must(a.Ack(ctx, device, posted.WelcomeID))(t)
			}
			st := must(b.WelcomeStatus(ctx, posted.WelcomeID))(t)
			if len(st.Recipients) != 2 {
				t.Fatalf("status = %+v", st)
			}
			for _, r := range st.Recipients {
				if r.Status != kpd.DeliveryAcked {
					t.Errorf("recipient %s: status %s, want acked", r.Device, r.Status)
				}
			}
		})
	}
}
