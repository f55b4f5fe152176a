package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

// keyPackage is a KeyPackage made before the timed phase.
type keyPackage struct {
	data []byte
	ref  kpd.Ref
	// welcome, for scenarios that post Welcomes, names only this ref.
	welcome []byte
}

// device is one device of a made-up (or the given) DID. Exactly one worker
// uses it, so its counters need no lock.
type device struct {
	did   string
	name  string
	owner *client.Client
	// need is how many KeyPackages to make for it.
	need int
	kps  []keyPackage
	// published and claimed count kps from the front: kps[:published] were
	// sent to the server, kps[:claimed] handed out by it (oldest first).
	published int
	claimed   int
}

// estimateRates are the operations per second that a duration-bounded run
// makes KeyPackages for when Config.KeyPackages is zero, per scenario:
// KeyPackages published per second for publish, claims per second for the
// others. They are a little above what a 2-core machine reaches.
var estimateRates = map[string]int{
	ScenarioPublish:   20000,
	ScenarioClaim:     12000,
	ScenarioRoundtrip: 2500,
	ScenarioMix:       5000,
}

// keyPackagesNeeded is how many KeyPackages the run makes in total.
func (r *runner) keyPackagesNeeded() int {
	cfg := r.cfg
	switch {
	case cfg.KeyPackages > 0:
		return cfg.KeyPackages
	case cfg.Count > 0 && cfg.Scenario == ScenarioPublish:
		return cfg.Count * cfg.Batch
	case cfg.Count > 0:
		return cfg.Count
	}
	return int(float64(estimateRates[cfg.Scenario]) * cfg.Duration.Seconds())
}

// perDevice is the number of KeyPackages one device gets: the pool size,
// for publish rounded down to whole batches.
func (r *runner) perDevice() int {
	if r.cfg.Scenario == ScenarioPublish {
		return r.cfg.PoolSize / r.cfg.Batch * r.cfg.Batch
	}
	return r.cfg.PoolSize
}

// share splits total into n parts that differ by at most one.
func share(total, n, i int) int {
	q := total / n
	if i < total%n {
		q++
	}
	return q
}

// prepare makes the workers, their identities, devices and KeyPackages, and
// fills the pools the scenario starts from.
func (r *runner) prepare(ctx context.Context) error {
	cfg := r.cfg
	total := 0
	if cfg.Scenario != ScenarioNoop {
		total = r.keyPackagesNeeded()
	}
	per := r.perDevice()
	for i := range cfg.Workers {
		w := &worker{
			id:    i,
			cfg:   &r.cfg,
			runID: r.runID,
			rec:   newRecorder(),
			rng:   rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))),
			quota: share(cfg.Count, cfg.Workers, i),
		}
		w.claimerDID, w.claimer = r.identity(fmt.Sprintf("c%d", i))
		for need := share(total, cfg.Workers, i); need > 0; need -= per {
			if cfg.Token != "" && len(w.devices) == 1 {
				r.logf("one DID (--token) gives each worker one device: worker %d makes %d KeyPackages fewer", i, need)
				break
			}
			w.devices = append(w.devices, r.newDevice(min(need, per)))
		}
		w.step = w.stepFor(cfg.Scenario)
		r.workers = append(r.workers, w)
	}
	if err := r.generate(ctx); err != nil {
		return err
	}
	return r.setup(ctx)
}

// identity returns the DID and client of a made-up identity called name;
// with a token, the one DID the token authenticates.
func (r *runner) identity(name string) (string, *client.Client) {
	if r.cfg.Token != "" {
		return r.cfg.DID, client.New(r.url, r.cfg.Token, client.WithHTTPClient(r.hc))
	}
	did := "did:plc:bench" + r.runID + name
	return did, client.New(r.url, did, client.WithHTTPClient(r.hc))
}

// newDevice returns the next device: with made-up DIDs, DevicesPerDID
// devices per DID.
func (r *runner) newDevice(need int) *device {
	k := r.report.Devices
	r.report.Devices++
	d := &device{need: need}
	if r.cfg.Token != "" {
		d.did, d.owner = r.identity("")
		d.name = fmt.Sprintf("bench-%s-%d", r.runID, k)
		return d
	}
	d.did, d.owner = r.identity(fmt.Sprintf("u%d", k/r.cfg.DevicesPerDID))
	d.name = fmt.Sprintf("d%d", k%r.cfg.DevicesPerDID)
	return d
}

// withWelcomes reports whether the scenario posts Welcomes.
func (r *runner) withWelcomes() bool {
	return r.cfg.Scenario == ScenarioRoundtrip || r.cfg.Scenario == ScenarioMix
}

// generate makes every device's KeyPackages (and Welcomes, if the scenario
// posts them) in parallel, one signing key per device. A device's
// KeyPackages share a lifetime, and each device's ends a second after the
// previous device's, as KeyPackages that devices made at different times
// do: were every lifetime the same, the store's expiry index (ordered by
// not_after, then ref) would take every publish's KeyPackages at random
// places, which no real mix of clients does.
func (r *runner) generate(ctx context.Context) error {
	var devices []*device
	for _, w := range r.workers {
		devices = append(devices, w.devices...)
	}
	if len(devices) == 0 {
		return nil
	}
	start := time.Now()
	now := time.Now()
	welcomes := r.withWelcomes()
	var made atomic.Int64
	err := parallel(ctx, len(devices), runtime.GOMAXPROCS(0), func(i int) error {
		d := devices[i]
		signer, err := mlstest.NewSigner(r.suite)
		if err != nil {
			return err
		}
		d.kps = make([]keyPackage, d.need)
		for j := range d.kps {
			bare, ref, err := mlstest.KeyPackage(r.suite, mlstest.Options{
				Identity:  d.did,
				NotBefore: now.Add(-time.Hour),
				NotAfter:  now.Add(30*24*time.Hour + time.Duration(i)*time.Second),
				Signer:    signer,
			})
			if err != nil {
				return err
			}
			kp := keyPackage{data: bare, ref: kpd.RefOf(ref)}
			if welcomes {
				if kp.welcome, err = mlstest.Welcome(r.suite, ref); err != nil {
					return err
				}
			}
			d.kps[j] = kp
		}
		made.Add(int64(d.need))
		return nil
	})
	r.report.Generated = int(made.Load())
	r.report.GenerateSeconds = time.Since(start).Seconds()
	if err != nil {
		return fmt.Errorf("make KeyPackages: %w", err)
	}
	r.logf("made %d KeyPackages of suite %d for %d devices in %.1fs (%d goroutines)",
		r.report.Generated, r.cfg.Suite, len(devices), r.report.GenerateSeconds, runtime.GOMAXPROCS(0))
	return nil
}

// setupShare is the part of each device's KeyPackages published before the
// timed phase.
func (r *runner) setupShare(d *device) int {
	switch r.cfg.Scenario {
	case ScenarioClaim, ScenarioRoundtrip:
		return len(d.kps)
	case ScenarioMix:
		return len(d.kps) / 2
	}
	return 0
}

// setup publishes, untimed, the KeyPackages that the scenario's pools start
// with, in batches of the API's maximum.
func (r *runner) setup(ctx context.Context) error {
	start := time.Now()
	var published atomic.Int64
	err := parallel(ctx, len(r.workers), r.cfg.Workers, func(i int) error {
		for _, d := range r.workers[i].devices {
			for n := r.setupShare(d); d.published < n; {
				batch := min(n-d.published, maxBatch)
				if _, err := d.owner.Publish(ctx, d.name, d.data(d.published, batch)); err != nil {
					return fmt.Errorf("publish to %s of %s: %w", d.name, d.did, err)
				}
				d.published += batch
				published.Add(int64(batch))
			}
		}
		return nil
	})
	r.report.SetupPublished = int(published.Load())
	r.report.SetupSeconds = time.Since(start).Seconds()
	if err != nil {
		return fmt.Errorf("fill pools: %w", err)
	}
	if r.report.SetupPublished > 0 {
		r.logf("filled pools with %d KeyPackages in %.1fs", r.report.SetupPublished, r.report.SetupSeconds)
	}
	return nil
}

// maxBatch is the most KeyPackages one publish may carry.
const maxBatch = 100

// data returns the bytes of n KeyPackages from index i.
func (d *device) data(i, n int) [][]byte {
	out := make([][]byte, n)
	for j := range out {
		out[j] = d.kps[i+j].data
	}
	return out
}

// parallel runs f(0..n-1) on at most conc goroutines and returns the first
// error; after an error or when ctx is done no new call starts.
func parallel(ctx context.Context, n, conc int, f func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					cancel(err)
				}
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}
