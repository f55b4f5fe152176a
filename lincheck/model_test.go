package lincheck

import (
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/kpd-dir/kpd"
)

// op builds an operation of one client on device "d" over [call, ret].
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	if in.Device == "" {
		in.Device = "d"
	}
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func publishOp(client int, call, ret int64, available int, refs ...kpd.Ref) porcupine.Operation {
	in := Input{Kind: KindPublish}
	out := Output{Available: available}
	for _, r := range refs {
		in.KeyPackages = append(in.KeyPackages, KeyPackage{Ref: r})
		out.Statuses = append(out.Statuses, kpd.PublishStored)
	}
	return op(client, call, ret, in, out)
}

func claimOp(client int, call, ret int64, got kpd.Ref) porcupine.Operation {
	return op(client, call, ret, Input{Kind: KindClaim}, Output{Ref: got})
}

func checkResult(t *testing.T, history []porcupine.Operation) porcupine.CheckResult {
	t.Helper()
	res, _ := Check(history, 0)
	return res
}

func TestModelAcceptsSequentialLifecycle(t *testing.T) {
	h := []porcupine.Operation{
		op(0, 0, 1, Input{Kind: KindClaim}, Output{Missing: kpd.CodeNoKeyPackages}),
		publishOp(0, 2, 3, 2, "a1", "a2"),
		op(0, 4, 5, Input{Kind: KindPublish, KeyPackages: []KeyPackage{{Ref: "a1"}, {Ref: "lr", LastResort: true}}},
			Output{Statuses: []kpd.PublishStatus{kpd.PublishDuplicate, kpd.PublishStored}, Available: 2}),
		claimOp(1, 6, 7, "a1"),
		op(1, 8, 9, Input{Kind: KindPostWelcome, Ref: "a1", WelcomeID: "w1"}, Output{}),
		op(0, 10, 11, Input{Kind: KindAck, Ref: "a1", WelcomeID: "w1"}, Output{Ref: "a1"}),
		op(0, 12, 13, Input{Kind: KindAck, Ref: "a1", WelcomeID: "w1"}, Output{Ref: "a1"}),
		op(1, 14, 15, Input{Kind: KindPostWelcome, Ref: "a1", WelcomeID: "w9"}, Output{Rejected: kpd.CodeAlreadyConsumed}),
		claimOp(1, 16, 17, "a2"),
		op(1, 18, 19, Input{Kind: KindClaim}, Output{Ref: "lr", LastResort: true}),
		op(1, 20, 21, Input{Kind: KindPostWelcome, Ref: "lr", WelcomeID: "w2"}, Output{}),
		op(0, 22, 23, Input{Kind: KindAck, Ref: "lr", WelcomeID: "w2"}, Output{Ref: "lr"}),
		op(1, 24, 25, Input{Kind: KindClaim}, Output{Ref: "lr", LastResort: true}),
		op(0, 26, 27, Input{Kind: KindAck, WelcomeID: "w3"}, Output{Err: kpd.CodeNotFound}),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("legal sequential history judged %v", res)
	}
}

func TestModelExhaustedWithoutLastResort(t *testing.T) {
	h := []porcupine.Operation{
		publishOp(0, 0, 1, 1, "a1"),
		claimOp(1, 2, 3, "a1"),
		op(1, 4, 5, Input{Kind: KindClaim}, Output{Missing: kpd.CodeExhausted}),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
	h[2] = op(1, 4, 5, Input{Kind: KindClaim}, Output{Missing: kpd.CodeNoKeyPackages})
	if res := checkResult(t, h); res != porcupine.Illegal {
		t.Fatalf("wrong missing reason judged %v", res)
	}
}

// Two claims that overlap in time may linearize in either order, so a
// history in which the later-returning one got the older ref is legal.
func TestModelAcceptsOverlappingClaimsInEitherOrder(t *testing.T) {
	h := []porcupine.Operation{
		publishOp(0, 0, 1, 2, "a1", "a2"),
		claimOp(1, 10, 30, "a2"),
		claimOp(2, 15, 40, "a1"),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
}

// A claim that overlaps a publish may see the published refs or not.
func TestModelAcceptsClaimConcurrentWithPublish(t *testing.T) {
	h := []porcupine.Operation{
		publishOp(0, 0, 1, 1, "a1"),
		claimOp(1, 2, 3, "a1"),
		publishOp(0, 10, 20, 1, "a2"),
		claimOp(1, 12, 18, "a2"),
	}
	if res := checkResult(t, h); res != porcupine.Ok {
		t.Fatalf("got %v", res)
	}
}

func TestModelRejectsBrokenHistories(t *testing.T) {
	base := func() []porcupine.Operation {
		return []porcupine.Operation{
			publishOp(0, 0, 1, 3, "a1", "a2", "a3"),
			op(0, 2, 3, Input{Kind: KindPublish, KeyPackages: []KeyPackage{{Ref: "lr", LastResort: true}}},
				Output{Statuses: []kpd.PublishStatus{kpd.PublishStored}, Available: 3}),
		}
	}
	cases := map[string][]porcupine.Operation{
		"same ref claimed twice": append(base(),
			claimOp(1, 10, 20, "a1"),
			claimOp(2, 15, 25, "a1")),
		"FIFO order violated": append(base(),
			claimOp(1, 10, 11, "a2"),
			claimOp(1, 12, 13, "a1")),
		"last resort while regular ones remain": append(base(),
			op(1, 10, 11, Input{Kind: KindClaim}, Output{Ref: "lr", LastResort: true})),
		"missing while last resort exists": append(base(),
			claimOp(1, 10, 11, "a1"), claimOp(1, 12, 13, "a2"), claimOp(1, 14, 15, "a3"),
			op(1, 16, 17, Input{Kind: KindClaim}, Output{Missing: kpd.CodeExhausted})),
		"consumed ref handed out": append(base(),
			claimOp(1, 10, 11, "a1"),
			op(1, 12, 13, Input{Kind: KindPostWelcome, Ref: "a1", WelcomeID: "w1"}, Output{}),
			op(0, 14, 15, Input{Kind: KindAck, Ref: "a1", WelcomeID: "w1"}, Output{Ref: "a1"}),
			claimOp(2, 16, 17, "a1")),
		"duplicate publish stored again": append(base(),
			publishOp(0, 10, 11, 4, "a1")),
		"wrong available count": append(base(),
			publishOp(0, 10, 11, 3, "a4")),
		"unknown welcome acked": append(base(),
			op(0, 10, 11, Input{Kind: KindAck, Ref: "a1", WelcomeID: "w1"}, Output{Ref: "a1"})),
		"welcome for an available ref routed": append(base(),
			op(1, 10, 11, Input{Kind: KindPostWelcome, Ref: "a1", WelcomeID: "w1"}, Output{})),
		"claim failed": append(base(),
			op(1, 10, 11, Input{Kind: KindClaim}, Output{Err: kpd.CodeInternal})),
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			if res := checkResult(t, h); res != porcupine.Illegal {
				t.Fatalf("broken history judged %v", res)
			}
		})
	}
}

// Devices are independent: a claim on one device never sees another's refs.
func TestModelPartitionsByDevice(t *testing.T) {
	h := []porcupine.Operation{
		op(0, 0, 1, Input{Kind: KindPublish, Device: "x", KeyPackages: []KeyPackage{{Ref: "x1"}}},
			Output{Statuses: []kpd.PublishStatus{kpd.PublishStored}, Available: 1}),
		op(1, 2, 3, Input{Kind: KindClaim, Device: "y"}, Output{Ref: "x1"}),
	}
	if res := checkResult(t, h); res != porcupine.Illegal {
		t.Fatalf("cross-device claim judged %v", res)
	}
	if got := len(partition(h)); got != 2 {
		t.Fatalf("partition gave %d parts, want 2", got)
	}
}
