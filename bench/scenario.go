package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
)

// Operation names in reports.
const (
	opPublish      = "publish"
	opClaim        = "claim"
	opPostWelcome  = "post_welcome"
	opListWelcomes = "list_welcomes"
	opAck          = "ack"
	opInventory    = "inventory"
	opRoundtrip    = "roundtrip"
	opNoop         = "noop"
)

// worker is one concurrent client. It owns its devices: nobody else
// publishes to or claims from them, so it knows which KeyPackage a claim
// must return.
type worker struct {
	id    int
	cfg   *Config
	runID string
	rec   *recorder
	rng   *rand.Rand
	// quota is the number of steps of a count-bounded run.
	quota int
	// step performs one operation (or round trip); false means the worker
	// has nothing left to do.
	step func(ctx context.Context) bool

	claimerDID string
	claimer    *client.Client
	devices    []*device
	// next is where the round-robin search for a device starts.
	next int

	// Mix state: claimed KeyPackages awaiting their Welcome, and posted
	// Welcomes awaiting their ack.
	claimed []claimedKP
	posted  []postedWelcome
	convos  int
}

type claimedKP struct {
	dev *device
	kp  keyPackage
}

type postedWelcome struct {
	dev *device
	id  string
}

// stepFor returns the step function of a scenario.
func (w *worker) stepFor(scenario string) func(ctx context.Context) bool {
	switch scenario {
	case ScenarioPublish:
		return w.publishStep
	case ScenarioClaim:
		return w.claimStep
	case ScenarioRoundtrip:
		return w.roundtripStep
	case ScenarioMix:
		return w.mixStep
	}
	return w.noopStep
}

// timed runs f, records its latency under op on success (with items moved)
// or the failure, and returns f's error. A failure after ctx is done (the
// end of a duration-bounded run cutting a request short) is not recorded.
func (w *worker) timed(ctx context.Context, op string, f func() (items int, err error)) error {
	start := time.Now()
	items, err := f()
	if err != nil {
		if ctx.Err() == nil {
			w.rec.fail(op, err)
		}
		return err
	}
	w.rec.ok(op, time.Since(start), items)
	return nil
}

// nextDevice returns the next device, round robin, for which ok holds, or
// nil if there is none.
func (w *worker) nextDevice(ok func(*device) bool) *device {
	for i := range w.devices {
		d := w.devices[(w.next+i)%len(w.devices)]
		if ok(d) {
			w.next = (w.next + i + 1) % len(w.devices)
			return d
		}
	}
	return nil
}

func unpublished(d *device) bool { return d.published < len(d.kps) }
func claimable(d *device) bool   { return d.claimed < d.published }

// publish sends up to n of d's unpublished KeyPackages. They count as sent
// even if the request fails, so a failing batch is not retried for ever.
func (w *worker) publish(ctx context.Context, d *device, n int) error {
	n = min(n, len(d.kps)-d.published)
	batch := d.data(d.published, n)
	d.published += n
	return w.timed(ctx, opPublish, func() (int, error) {
		res, err := d.owner.Publish(ctx, d.name, batch)
		if err != nil {
			return 0, err
		}
		stored := 0
		for _, it := range res.Results {
			if it.Status == kpd.PublishStored {
				stored++
			}
		}
		if stored != n {
			return stored, kpd.Errorf(kpd.CodeConflict, "%d of %d KeyPackages stored", stored, n)
		}
		return stored, nil
	})
}

// claim claims one KeyPackage of d and checks that it is the oldest one d
// has left.
func (w *worker) claim(ctx context.Context, d *device) (keyPackage, error) {
	want := d.kps[d.claimed]
	d.claimed++
	err := w.timed(ctx, opClaim, func() (int, error) {
		res, err := w.claimer.Claim(ctx, client.ClaimRequest{
			CipherSuite: w.cfg.Suite,
			Targets:     []kpd.ClaimTarget{{DID: d.did, Devices: []string{d.name}}},
		})
		switch {
		case err != nil:
			return 0, err
		case len(res.KeyPackages) != 1:
			return 0, kpd.Errorf(kpd.CodeExhausted, "claim of a device with %d available KeyPackages got %d", d.published-d.claimed+1, len(res.KeyPackages))
		case res.KeyPackages[0].Ref != want.ref:
			return 0, kpd.Errorf(kpd.CodeConflict, "claim returned %s, want the oldest available %s", res.KeyPackages[0].Ref, want.ref)
		}
		return 1, nil
	})
	return want, err
}

// postWelcome posts kp's Welcome as the claimer and returns its id.
func (w *worker) postWelcome(ctx context.Context, kp keyPackage) (string, error) {
	w.convos++
	convo := fmt.Sprintf("bench-%s-%d-%d", w.runID, w.id, w.convos)
	var id string
	err := w.timed(ctx, opPostWelcome, func() (int, error) {
		res, err := w.claimer.PostWelcome(ctx, convo, kp.welcome)
		if err != nil {
			return 0, err
		}
		if len(res.Recipients) != 1 {
			return 0, kpd.Errorf(kpd.CodeUnknownKeyPackage, "Welcome routed to %d devices, rejected %v", len(res.Recipients), res.Rejected)
		}
		id = res.WelcomeID
		return 0, nil
	})
	return id, err
}

// listWelcomes lists d's pending Welcomes and, if id is set, checks that it
// is among them.
func (w *worker) listWelcomes(ctx context.Context, d *device, id string) error {
	return w.timed(ctx, opListWelcomes, func() (int, error) {
		list, err := d.owner.Welcomes(ctx, d.name, client.ListOptions{})
		if err != nil {
			return 0, err
		}
		for _, pw := range list {
			if pw.WelcomeID == id {
				return 0, nil
			}
		}
		if id != "" {
			return 0, kpd.Errorf(kpd.CodeNotFound, "posted Welcome %s not pending for its device", id)
		}
		return 0, nil
	})
}

// ack acknowledges Welcome id as d.
func (w *worker) ack(ctx context.Context, d *device, id string) error {
	return w.timed(ctx, opAck, func() (int, error) {
		_, err := d.owner.Ack(ctx, d.name, id)
		return 0, err
	})
}

func (w *worker) publishStep(ctx context.Context) bool {
	d := w.nextDevice(unpublished)
	if d == nil {
		return false
	}
	_ = w.publish(ctx, d, w.cfg.Batch)
	return true
}

func (w *worker) claimStep(ctx context.Context) bool {
	d := w.nextDevice(claimable)
	if d == nil {
		return false
	}
	_, _ = w.claim(ctx, d)
	return true
}

// roundtripStep claims a KeyPackage, posts a Welcome made for it, lists the
// device's pending Welcomes and acknowledges it; the whole round trip is
// recorded too when every step succeeded.
func (w *worker) roundtripStep(ctx context.Context) bool {
	d := w.nextDevice(claimable)
	if d == nil {
		return false
	}
	_ = w.timed(ctx, opRoundtrip, func() (int, error) {
		kp, err := w.claim(ctx, d)
		if err != nil {
			return 0, err
		}
		id, err := w.postWelcome(ctx, kp)
		if err != nil {
			return 0, err
		}
		if err := w.listWelcomes(ctx, d, id); err != nil {
			return 0, err
		}
		return 0, w.ack(ctx, d, id)
	})
	return true
}

// mixWeights are the relative frequencies of the mix scenario's
// operations; an operation that is impossible at the moment (nothing to
// claim, no Welcome to ack) gives way to the others.
var mixWeights = []struct {
	op     string
	weight int
}{
	{opClaim, 35},
	{opPostWelcome, 15},
	{opListWelcomes, 15},
	{opAck, 15},
	{opInventory, 10},
	{opPublish, 10},
}

// mixBatch is the number of KeyPackages a device publishes at a time in the
// mix: a client replenishing its pool.
const mixBatch = 10

func (w *worker) mixStep(ctx context.Context) bool {
	if len(w.devices) == 0 {
		return false
	}
	possible := func(op string) bool {
		switch op {
		case opClaim:
			return w.nextDeviceExists(claimable)
		case opPostWelcome:
			return len(w.claimed) > 0
		case opAck:
			return len(w.posted) > 0
		case opPublish:
			return w.nextDeviceExists(unpublished)
		}
		return true
	}
	sum := 0
	for _, m := range mixWeights {
		if possible(m.op) {
			sum += m.weight
		}
	}
	pick := w.rng.IntN(sum)
	for _, m := range mixWeights {
		if !possible(m.op) {
			continue
		}
		if pick -= m.weight; pick < 0 {
			w.mixOp(ctx, m.op)
			return true
		}
	}
	return true
}

func (w *worker) nextDeviceExists(ok func(*device) bool) bool {
	for _, d := range w.devices {
		if ok(d) {
			return true
		}
	}
	return false
}

func (w *worker) mixOp(ctx context.Context, op string) {
	switch op {
	case opClaim:
		d := w.nextDevice(claimable)
		if kp, err := w.claim(ctx, d); err == nil {
			w.claimed = append(w.claimed, claimedKP{d, kp})
		}
	case opPostWelcome:
		c := w.claimed[0]
		w.claimed = w.claimed[1:]
		if id, err := w.postWelcome(ctx, c.kp); err == nil {
			w.posted = append(w.posted, postedWelcome{c.dev, id})
		}
	case opAck:
		p := w.posted[0]
		w.posted = w.posted[1:]
		_ = w.ack(ctx, p.dev, p.id)
	case opListWelcomes:
		_ = w.listWelcomes(ctx, w.nextDevice(func(*device) bool { return true }), "")
	case opInventory:
		d := w.nextDevice(func(*device) bool { return true })
		_ = w.timed(ctx, opInventory, func() (int, error) {
			_, err := d.owner.Inventory(ctx, d.name, false)
			return 0, err
		})
	case opPublish:
		_ = w.publish(ctx, w.nextDevice(unpublished), mixBatch)
	}
}

// noopStep sends the claim request of the claim scenario to the noop
// server.
func (w *worker) noopStep(ctx context.Context) bool {
	_ = w.timed(ctx, opNoop, func() (int, error) {
		_, err := w.claimer.Claim(ctx, client.ClaimRequest{
			CipherSuite: w.cfg.Suite,
			Targets:     []kpd.ClaimTarget{{DID: w.claimerDID, Devices: []string{"noop"}}},
		})
		return 0, err
	})
	return true
}
