package lincheck

import (
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/kpd-dir/kpd"
)

// The DIDs of the model tests' claimers.
const (
	alice = "did:plc:alice"
	bob   = "did:plc:bob"
)

// op builds an operation of one client on device "d" over [call, ret].
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	if in.Device == "" {
		in.Device = "d"
	}
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

// publishOp publishes regular refs, all new, leaving counts.
func publishOp(client int, call, ret int64, counts Counts, refs ...kpd.Ref) porcupine.Operation {
	in := Input{Kind: KindPublish}
	out := Output{Counts: counts}
	for _, r := range refs {
		in.KeyPackages = append(in.KeyPackages, KeyPackage{Ref: r})
		out.Statuses = append(out.Statuses, kpd.PublishStored)
	}
	return op(client, call, ret, in, out)
}

// lastResortOp publishes ref as the last resort, new, leaving counts.
func lastResortOp(client int, call, ret int64, counts Counts, ref kpd.Ref) porcupine.Operation {
	return op(client, call, ret, Input{Kind: KindPublish, KeyPackages: []KeyPackage{{Ref: ref, LastResort: true}}},
		Output{Statuses: []kpd.PublishStatus{kpd.PublishStored}, Counts: counts})
}

func claimOp(client int, call, ret int64, caller string, got kpd.Ref) porcupine.Operation {
	return op(client, call, ret, Input{Kind: KindClaim, Caller: caller}, Output{Ref: got})
}

// postOp posts Welcome id for ref from caller; a routed one is new and
// pending.
func postOp(client int, call, ret int64, caller string, ref kpd.Ref, id string, rejected kpd.Code) porcupine.Operation {
	out := Output{Rejected: rejected}
	if rejected == "" {
		out = Output{Created: true, Status: kpd.DeliveryPending}
	}
	return op(client, call, ret, Input{Kind: KindPostWelcome, Caller: caller, Ref: ref, WelcomeID: id}, out)
}

func ackOp(client int, call, ret int64, id string, ref kpd.Ref) porcupine.Operation {
	return op(client, call, ret, Input{Kind: KindAck, WelcomeID: id}, Output{Ref: ref})
}

func listOp(client int, call, ret int64, pending ...Pending) porcupine.Operation {
	return op(client, call, ret, Input{Kind: KindList}, Output{Pending: pending})
}

func unknown(o porcupine.Operation) porcupine.Operation {
	o.Output = Output{Unknown: true}
	return o
}

func checkResult(t *testing.T, history []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	res, _ := Check(EndUnknown(history), 0)
	return res
}

func TestModelAcceptsSequentialLifecycle(t *testing.T) {
	h := []porcupine.Operation{
		op(0, 0, 1, Input{Kind: KindClaim, Caller: alice}, Output{Missing: kpd.CodeNoKeyPackages}),
		op(0, 0, 1, Input{Kind: KindList}, Output{Err: kpd.CodeNotFound}),
		publishOp(0, 2, 3, Counts{Available: 2}, "a1", "a2"),
		op(0, 4, 5, Input{Kind: KindPublish, KeyPackages: []KeyPackage{{Ref: "a1"}, {Ref: "lr", LastResort: true}}},
			Output{Statuses: []kpd.PublishStatus{kpd.PublishDuplicate, kpd.PublishStored}, Counts: Counts{Available: 2, LastResort: "lr"}}),
		claimOp(1, 6, 7, alice, "a1"),
		postOp(2, 8, 9, bob, "a1", "w0", kpd.CodeNotClaimedByCaller),
		postOp(1, 8, 9, alice, "a1", "w1", ""),
		postOp(1, 10, 11, alice, "a1", "w8", kpd.CodeAlreadyConsumed),
		listOp(0, 12, 13, Pending{WelcomeID: "w1", Ref: "a1", Sender: alice}),
		op(0, 14, 15, Input{Kind: KindInventory}, Output{Counts: Counts{Available: 1, Claimed: 1, LastResort: "lr"},
			KeyPackages: []Listed{{"a1", kpd.StateClaimed, false}, {"a2", kpd.StateAvailable, false}, {"lr", kpd.StateAvailable, true}}}),
		ackOp(0, 16, 17, "w1", "a1"),
		ackOp(0, 18, 19, "w1", "a1"),
		listOp(0, 20, 21),
		op(1, 20, 21, Input{Kind: KindPostWelcome, Caller: alice, Ref: "a1", WelcomeID: "w1"}, Output{Status: kpd.DeliveryAcked}),
		op(1, 22, 23, Input{Kind: KindPostWelcome, Caller: bob, Ref: "a1", WelcomeID: "w1"}, Output{Err: kpd.CodeConflict}),
		postOp(1, 24, 25, alice, "a1", "w9", kpd.CodeAlreadyConsumed),
		op(0, 26, 27, Input{Kind: KindInventory}, Output{Counts: Counts{Available: 1, LastResort: "lr"},
			KeyPackages: []Listed{{"a1", kpd.StateConsumed, false}, {"a2", kpd.StateAvailable, false}, {"lr", kpd.StateAvailable, true}}}),
		claimOp(1, 28, 29, alice, "a2"),
		op(1, 30, 31, Input{Kind: KindClaim, Caller: alice}, Output{Ref: "lr", LastResort: true}),
		postOp(2, 32, 33, bob, "lr", "w2", ""),
		postOp(1, 34, 35, alice, "lr", "w3", ""),
		op(0, 36, 37, Input{Kind: KindTake}, Output{WelcomeID: "w2", Ref: "lr"}),
		ackOp(0, 38, 39, "w2", "lr"),
		listOp(0, 40, 41, Pending{WelcomeID: "w3", Ref: "lr", Sender: alice}),
		op(0, 42, 43, Input{Kind: KindTake}, Output{WelcomeID: "w3", Ref: "lr"}),
		op(0, 44, 45, Input{Kind: KindTake}, Output{Err: kpd.CodeNotFound}),
		op(1, 46, 47, Input{Kind: KindClaim, Caller: bob}, Output{Ref: "lr", LastResort: true}),
		op(0, 48, 49, Input{Kind: KindAck, WelcomeID: "w4"}, Output{Err: kpd.CodeNotFound}),
		publishOp(0, 50, 51, Counts{Available: 1, Claimed: 1, LastResort: "lr"}, "a3"),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("legal sequential history judged %v", res)
	}
}

// A last resort replaced while a Welcome routed to it is pending is
// retired: listed, but unknown to new Welcomes, until that Welcome ends.
func TestModelRetiresLastResort(t *testing.T) {
	h := []porcupine.Operation{
		lastResortOp(0, 0, 1, Counts{LastResort: "lr1"}, "lr1"),
		postOp(1, 2, 3, bob, "lr1", "w1", ""),
		lastResortOp(0, 4, 5, Counts{LastResort: "lr2"}, "lr2"),
		postOp(1, 6, 7, bob, "lr1", "w2", kpd.CodeUnknownKeyPackage),
		op(0, 8, 9, Input{Kind: KindInventory}, Output{Counts: Counts{LastResort: "lr2"},
			KeyPackages: []Listed{{"lr1", kpd.StateAvailable, true}, {"lr2", kpd.StateAvailable, true}}}),
		ackOp(0, 10, 11, "w1", "lr1"),
		op(0, 12, 13, Input{Kind: KindInventory}, Output{Counts: Counts{LastResort: "lr2"},
			KeyPackages: []Listed{{"lr2", kpd.StateAvailable, true}}}),
		// Gone for good: publishing it again stores it.
		lastResortOp(0, 14, 15, Counts{LastResort: "lr1"}, "lr1"),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
}

func TestModelExhaustedWithoutLastResort(t *testing.T) {
	h := []porcupine.Operation{
		publishOp(0, 0, 1, Counts{Available: 1}, "a1"),
		claimOp(1, 2, 3, alice, "a1"),
		op(1, 4, 5, Input{Kind: KindClaim, Caller: alice}, Output{Missing: kpd.CodeExhausted}),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
	h[2] = op(1, 4, 5, Input{Kind: KindClaim, Caller: alice}, Output{Missing: kpd.CodeNoKeyPackages})
	if res := checkResult(t, h); res != porcupine.Illegal {
		t.Fatalf("wrong missing reason judged %v", res)
	}
}

// Two claims that overlap in time may linearize in either order, so a
// history in which the later-returning one got the older ref is legal.
func TestModelAcceptsOverlappingClaimsInEitherOrder(t *testing.T) {
	h := []porcupine.Operation{
		publishOp(0, 0, 1, Counts{Available: 2}, "a1", "a2"),
		claimOp(1, 10, 30, alice, "a2"),
		claimOp(2, 15, 40, bob, "a1"),
		postOp(2, 41, 42, bob, "a1", "w1", ""),
		postOp(2, 41, 42, alice, "a2", "w2", ""),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
}

// A claim that overlaps a publish may see the published refs or not.
func TestModelAcceptsClaimConcurrentWithPublish(t *testing.T) {
	h := []porcupine.Operation{
		publishOp(0, 0, 1, Counts{Available: 1}, "a1"),
		claimOp(1, 2, 3, alice, "a1"),
		publishOp(0, 10, 20, Counts{Available: 1, Claimed: 1}, "a2"),
		claimOp(1, 12, 18, alice, "a2"),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
}

// An ack that overlaps a listing may show in it or not, but one that
// returned before a listing began must show.
func TestModelListingAfterAck(t *testing.T) {
	base := []porcupine.Operation{
		publishOp(0, 0, 1, Counts{Available: 1}, "a1"),
		claimOp(1, 2, 3, alice, "a1"),
		postOp(1, 4, 5, alice, "a1", "w1", ""),
	}
	pending := Pending{WelcomeID: "w1", Ref: "a1", Sender: alice}
	for name, c := range map[string]struct {
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		"overlapping, still pending": {[]porcupine.Operation{ackOp(0, 10, 20, "w1", "a1"), listOp(2, 12, 18, pending)}, porcupine.Ok},
		"overlapping, acked":         {[]porcupine.Operation{ackOp(0, 10, 20, "w1", "a1"), listOp(2, 12, 18)}, porcupine.Ok},
		"after, still pending":       {[]porcupine.Operation{ackOp(0, 10, 11, "w1", "a1"), listOp(2, 12, 18, pending)}, porcupine.Illegal},
	} {
		t.Run(name, func(t *testing.T) {
			if res := checkResult(t, append(append([]porcupine.Operation(nil), base...), c.h...)); res != c.want {
				t.Fatalf("judged %v, want %v", res, c.want)
			}
		})
	}
}

func TestModelRejectsBrokenHistories(t *testing.T) {
	base := func() []porcupine.Operation {
		return []porcupine.Operation{
			publishOp(0, 0, 1, Counts{Available: 3}, "a1", "a2", "a3"),
			lastResortOp(0, 2, 3, Counts{Available: 3, LastResort: "lr"}, "lr"),
		}
	}
	// acked has a1 claimed by alice, its Welcome w1 posted and acked.
	acked := func(more ...porcupine.Operation) []porcupine.Operation {
		return append(append(base(),
			claimOp(1, 10, 11, alice, "a1"),
			postOp(1, 12, 13, alice, "a1", "w1", ""),
			ackOp(0, 14, 15, "w1", "a1")), more...)
	}
	cases := map[string][]porcupine.Operation{
		"same ref claimed twice": append(base(),
			claimOp(1, 10, 20, alice, "a1"),
			claimOp(2, 15, 25, bob, "a1")),
		"FIFO order violated": append(base(),
			claimOp(1, 10, 11, alice, "a2"),
			claimOp(1, 12, 13, alice, "a1")),
		"last resort while regular ones remain": append(base(),
			op(1, 10, 11, Input{Kind: KindClaim, Caller: alice}, Output{Ref: "lr", LastResort: true})),
		"missing while last resort exists": append(base(),
			claimOp(1, 10, 11, alice, "a1"), claimOp(1, 12, 13, alice, "a2"), claimOp(1, 14, 15, alice, "a3"),
			op(1, 16, 17, Input{Kind: KindClaim, Caller: alice}, Output{Missing: kpd.CodeExhausted})),
		"consumed ref handed out": acked(claimOp(2, 16, 17, bob, "a1")),
		"duplicate publish stored again": append(base(),
			publishOp(0, 10, 11, Counts{Available: 4, LastResort: "lr"}, "a1")),
		"wrong available count": append(base(),
			publishOp(0, 10, 11, Counts{Available: 3, LastResort: "lr"}, "a4")),
		"claimed count missing a claim": append(base(),
			claimOp(1, 10, 11, alice, "a1"),
			publishOp(0, 12, 13, Counts{Available: 3, LastResort: "lr"}, "a4")),
		"unknown welcome acked": append(base(),
			ackOp(0, 10, 11, "w1", "a1")),
		"welcome for an available ref routed": append(base(),
			postOp(1, 10, 11, alice, "a1", "w1", "")),
		"welcome from a DID that did not claim routed": append(base(),
			claimOp(1, 10, 11, alice, "a1"),
			postOp(2, 12, 13, bob, "a1", "w1", "")),
		"welcome from the claimer rejected": append(base(),
			claimOp(1, 10, 11, alice, "a1"),
			postOp(1, 12, 13, alice, "a1", "w1", kpd.CodeNotClaimedByCaller)),
		"second welcome for a claimed ref routed": append(base(),
			claimOp(1, 10, 11, alice, "a1"),
			postOp(1, 12, 13, alice, "a1", "w1", ""),
			postOp(1, 14, 15, alice, "a1", "w2", "")),
		"ack that wrote nothing (listing)": acked(listOp(0, 16, 17, Pending{WelcomeID: "w1", Ref: "a1", Sender: alice})),
		"ack that wrote nothing (take)": acked(
			op(0, 16, 17, Input{Kind: KindTake}, Output{WelcomeID: "w1", Ref: "a1"})),
		"ack that did not consume (inventory)": acked(
			op(0, 16, 17, Input{Kind: KindInventory}, Output{Counts: Counts{Available: 2, Claimed: 1, LastResort: "lr"},
				KeyPackages: []Listed{{"a1", kpd.StateClaimed, false}, {"a2", kpd.StateAvailable, false},
					{"a3", kpd.StateAvailable, false}, {"lr", kpd.StateAvailable, true}}})),
		"ack that did not consume (publish)": acked(
			publishOp(0, 16, 17, Counts{Available: 3, Claimed: 1, LastResort: "lr"}, "a4")),
		"repeated post of an acked welcome still pending": acked(
			op(1, 16, 17, Input{Kind: KindPostWelcome, Caller: alice, Ref: "a1", WelcomeID: "w1"}, Output{Status: kpd.DeliveryPending})),
		"listing with another sender": append(base(),
			claimOp(1, 10, 11, alice, "a1"),
			postOp(1, 12, 13, alice, "a1", "w1", ""),
			listOp(0, 14, 15, Pending{WelcomeID: "w1", Ref: "a1", Sender: bob})),
		"claim failed": append(base(),
			op(1, 10, 11, Input{Kind: KindClaim, Caller: alice}, Output{Err: kpd.CodeInternal})),
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			if res := checkResult(t, h); res != porcupine.Illegal {
				t.Fatalf("broken history judged %v", res)
			}
		})
	}
}

// An operation whose outcome is unknown may have taken effect or not; a
// definite error the model does not predict is illegal.
func TestModelUnknownOutcomes(t *testing.T) {
	setup := func(more ...porcupine.Operation) []porcupine.Operation {
		return append([]porcupine.Operation{
			publishOp(0, 0, 1, Counts{Available: 2}, "a1", "a2"),
		}, more...)
	}
	posted := func(more ...porcupine.Operation) []porcupine.Operation {
		return setup(append([]porcupine.Operation{
			claimOp(1, 2, 3, alice, "a1"),
			postOp(1, 4, 5, alice, "a1", "w1", ""),
		}, more...)...)
	}
	pending := Pending{WelcomeID: "w1", Ref: "a1", Sender: alice}
	cases := []struct {
		name string
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"claim that took effect", setup(unknown(claimOp(1, 10, 11, bob, "")), claimOp(2, 20, 21, alice, "a2")), porcupine.Ok},
		{"claim that did not", setup(unknown(claimOp(1, 10, 11, bob, "")), claimOp(2, 20, 21, alice, "a1")), porcupine.Ok},
		{"claim that did not, then took effect", setup(unknown(claimOp(1, 10, 11, bob, "")),
			claimOp(2, 20, 21, alice, "a1"), publishOp(0, 22, 23, Counts{Available: 1, Claimed: 2}, "a3")), porcupine.Ok},
		{"but not before its call", setup(claimOp(2, 5, 6, alice, "a2"), unknown(claimOp(1, 10, 11, bob, ""))), porcupine.Illegal},
		{"ack that took effect", posted(unknown(ackOp(0, 10, 11, "w1", "")), listOp(0, 20, 21)), porcupine.Ok},
		{"ack that did not", posted(unknown(ackOp(0, 10, 11, "w1", "")), listOp(0, 20, 21, pending)), porcupine.Ok},
		{"post that took effect", setup(claimOp(1, 2, 3, alice, "a1"), unknown(postOp(1, 4, 5, alice, "a1", "w1", "")),
			listOp(0, 20, 21, pending)), porcupine.Ok},
		{"post that did not", setup(claimOp(1, 2, 3, alice, "a1"), unknown(postOp(1, 4, 5, alice, "a1", "w1", "")),
			listOp(0, 20, 21)), porcupine.Ok},
		{"definite error of a claim", setup(
			op(1, 10, 11, Input{Kind: KindClaim, Caller: alice}, Output{Err: kpd.CodeRateLimited}),
			claimOp(2, 20, 21, alice, "a1")), porcupine.Illegal},
		{"definite error of an ack", posted(
			op(0, 10, 11, Input{Kind: KindAck, WelcomeID: "w1"}, Output{Err: kpd.CodeConflict})), porcupine.Illegal},
		{"definite error of a post", setup(claimOp(1, 2, 3, alice, "a1"),
			op(1, 4, 5, Input{Kind: KindPostWelcome, Caller: alice, Ref: "a1", WelcomeID: "w1"}, Output{Err: kpd.CodeBadRequest})), porcupine.Illegal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if res := checkResult(t, c.h); res != c.want {
				t.Fatalf("judged %v, want %v", res, c.want)
			}
		})
	}
}

func TestEndUnknown(t *testing.T) {
	h := EndUnknown([]porcupine.Operation{
		publishOp(0, 0, 5, Counts{Available: 1}, "a1"),
		unknown(claimOp(1, 2, 3, alice, "")),
		claimOp(2, 7, 9, bob, "a1"),
		unknown(claimOp(1, 12, 13, alice, "")),
	})
	if h[1].Return != 13 || h[3].Return != 13 || h[0].Return != 5 || h[2].Return != 9 {
		t.Fatalf("return times %d %d %d %d, want 5 13 9 13", h[0].Return, h[1].Return, h[2].Return, h[3].Return)
	}
}

// Devices are independent: a claim on one device never sees another's refs.
func TestModelPartitionsByDevice(t *testing.T) {
	h := []porcupine.Operation{
		op(0, 0, 1, Input{Kind: KindPublish, Device: "x", KeyPackages: []KeyPackage{{Ref: "x1"}}},
			Output{Statuses: []kpd.PublishStatus{kpd.PublishStored}, Counts: Counts{Available: 1}}),
		op(1, 2, 3, Input{Kind: KindClaim, Device: "y", Caller: alice}, Output{Ref: "x1"}),
	}
	if res := checkResult(t, h); res != porcupine.Illegal {
		t.Fatalf("cross-device claim judged %v", res)
	}
	if got := len(partition(h)); got != 2 {
		t.Fatalf("partition gave %d parts, want 2", got)
	}
}
