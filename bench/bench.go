// Package bench is kpd's load generator. It drives a running kpd (or one it
// starts in-process) through the Go client with many concurrent workers,
// using real, signed KeyPackages (and Welcomes naming them) that it makes
// itself before the timed phase, and reports throughput and latency
// percentiles per operation.
//
// Scenarios:
//   - publish: each worker publishes batches of fresh KeyPackages to its
//     devices.
//   - claim: pools are filled first (untimed); then each worker claims one
//     KeyPackage per request from its devices.
//   - roundtrip: claim, post a Welcome for the claimed KeyPackage, list the
//     device's pending Welcomes, acknowledge it.
//   - mix: a weighted random mix of all of the above and inventory reads.
//   - noop: the same client call against an in-process server whose handler
//     answers a fixed small JSON document: the floor of the HTTP stack.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
)

// Scenario names.
const (
	ScenarioPublish   = "publish"
	ScenarioClaim     = "claim"
	ScenarioRoundtrip = "roundtrip"
	ScenarioMix       = "mix"
	ScenarioNoop      = "noop"
)

// Scenarios lists every scenario name.
var Scenarios = []string{ScenarioPublish, ScenarioClaim, ScenarioRoundtrip, ScenarioMix, ScenarioNoop}

// Defaults of Config's zero fields.
const (
	DefaultWorkers       = 64
	DefaultBatch         = 50
	DefaultDuration      = 10 * time.Second
	DefaultPoolSize      = 200
	DefaultDevicesPerDID = 4
	DefaultSuite         = 1
)

// Config is one benchmark run. Zero fields take the defaults above.
type Config struct {
	// Scenario is one of Scenarios.
	Scenario string
	// URL is the base URL of a running kpd. Exactly one of URL and
	// InProcess must be set (the noop scenario needs neither: it always
	// starts its own server).
	URL string
	// Token authenticates every request as DID against a kpd using token
	// authentication: one DID, so at most 20 devices and one worker per
	// device.
	Token string
	DID   string
	// Dev uses dev authentication (Bearer <did>) against URL: the bench
	// makes up as many DIDs as it needs.
	Dev bool
	// InProcess starts kpd in this process: the bbolt store on DBPath
	// (fsync on) and the HTTP API with dev authentication on 127.0.0.1.
	InProcess bool
	// DBPath is the in-process database file; empty means a temporary
	// file, removed after the run.
	DBPath string
	// Preload stores this many synthetic KeyPackages directly in the
	// in-process store before the run (batches of PoolSize per device,
	// random refs), to measure kpd with a large database.
	Preload int
	// NoSync, in-process only, skips fsync after commits. It is a
	// diagnostic (how much of a figure the disk costs), never a production
	// setting: a crash can then lose data.
	NoSync bool
	// CPUProfile, in-process only, writes a CPU profile of the timed phase
	// (server and load generator share the process) to this file.
	CPUProfile string

	// Suite is the cipher suite of the KeyPackages (default 1).
	Suite uint16
	// Workers is the number of concurrent clients (default 64).
	Workers int
	// Duration bounds the timed phase (default 10 s unless Count is set).
	Duration time.Duration
	// Count, if set, runs exactly this many operations (publish batches,
	// claims, round trips, mix steps or noop requests) instead of a
	// duration.
	Count int
	// Rate, if set, paces the workers to this many operations per second
	// in total (each worker spaces its own evenly); 0 means as fast as the
	// server answers. Latencies at a fixed fraction of the peak rate come
	// from a paced run.
	Rate float64
	// Batch is the number of KeyPackages per publish of the publish
	// scenario (default 50; the mix publishes 10 at a time).
	Batch int
	// KeyPackages is how many KeyPackages to make before the timed phase.
	// Default: what Count needs, or with a duration an estimate of what the
	// scenario can use (see estimateRates); a worker whose KeyPackages run
	// out stops early and the report says so.
	KeyPackages int
	// PoolSize is the number of KeyPackages per device (default 200, the
	// server's default per-device quota; it must not exceed the server's
	// --max-available).
	PoolSize int
	// DevicesPerDID is how many devices each made-up DID gets (default 4,
	// at most the server's --max-devices).
	DevicesPerDID int

	// Progress, when set, receives a progress line every second (meant for
	// a terminal: the line is redrawn with a carriage return).
	Progress io.Writer
	// Log, when set, receives one line per preparation step.
	Log io.Writer
}

// Report is the outcome of a run.
type Report struct {
	Scenario string    `json:"scenario"`
	Target   string    `json:"target"`
	Date     time.Time `json:"date"`
	Machine  Machine   `json:"machine"`
	Suite    uint16    `json:"cipher_suite"`
	Workers  int       `json:"workers"`
	// Rate is the paced rate asked for (0: unpaced).
	Rate    float64 `json:"rate,omitempty"`
	Batch   int     `json:"batch,omitempty"`
	Devices int     `json:"devices"`
	// Generated KeyPackages were made (and signed) before the timed phase,
	// in GenerateSeconds.
	Generated       int     `json:"keypackages_generated"`
	GenerateSeconds float64 `json:"generate_seconds"`
	// SetupPublished KeyPackages were published, untimed, to fill pools.
	SetupPublished int     `json:"setup_published"`
	SetupSeconds   float64 `json:"setup_seconds"`
	// Preloaded synthetic KeyPackages were written to the store directly.
	Preloaded      int     `json:"preloaded"`
	PreloadSeconds float64 `json:"preload_seconds"`
	// Seconds is the length of the timed phase.
	Seconds float64 `json:"seconds"`
	// Stopped says what ended the timed phase: "count", "duration" or
	// "keypackages exhausted".
	Stopped    string       `json:"stopped"`
	Operations []OpReport   `json:"operations"`
	Errors     []ErrorCount `json:"errors"`
	// Store is what the in-process store's group commit did in the
	// timed phase; nil against a URL.
	Store *StoreReport `json:"store,omitempty"`
}

// StoreReport counts the in-process store's commits in the timed phase:
// write transactions, the store operations they carried and the pages
// bbolt wrote for them (kv.WriteStats).
type StoreReport struct {
	Commits      int64 `json:"commits"`
	Operations   int64 `json:"operations"`
	PagesWritten int64 `json:"pages_written"`
	// Commit times: how long bbolt took to write and fsync a
	// transaction's pages (kv.Observer's CommitBatch), in milliseconds.
	CommitP50Ms float64 `json:"commit_p50_ms"`
	CommitP99Ms float64 `json:"commit_p99_ms"`
	CommitMaxMs float64 `json:"commit_max_ms"`
}

// Op returns the report of the named operation, or nil.
func (r *Report) Op(name string) *OpReport {
	for i := range r.Operations {
		if r.Operations[i].Op == name {
			return &r.Operations[i]
		}
	}
	return nil
}

// Stop reasons.
const (
	stoppedCount     = "count"
	stoppedDuration  = "duration"
	stoppedExhausted = "keypackages exhausted"
)

// errBadConfig marks configuration errors.
var errBadConfig = errors.New("bench")

func configErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadConfig, fmt.Sprintf(format, args...))
}

// IsConfigError reports whether err is a problem with the Config rather than
// with the run.
func IsConfigError(err error) bool { return errors.Is(err, errBadConfig) }

func (c *Config) setDefaults() error {
	if c.Scenario == "" {
		c.Scenario = ScenarioClaim
	}
	if !slices.Contains(Scenarios, c.Scenario) {
		return configErrorf("unknown scenario %q (want one of %v)", c.Scenario, Scenarios)
	}
	if c.Suite == 0 {
		c.Suite = DefaultSuite
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	if c.DevicesPerDID == 0 {
		c.DevicesPerDID = DefaultDevicesPerDID
	}
	if c.Duration == 0 && c.Count == 0 {
		c.Duration = DefaultDuration
	}
	switch {
	case c.Workers < 0 || c.Batch < 0 || c.Count < 0 || c.Duration < 0 || c.Preload < 0 || c.KeyPackages < 0 || c.Rate < 0:
		return configErrorf("workers, batch, count, duration, rate, preload and keypackages must not be negative")
	case c.Batch > 100:
		return configErrorf("batch %d: kpd accepts at most 100 KeyPackages per publish", c.Batch)
	case c.Scenario == ScenarioPublish && c.Batch > c.PoolSize:
		return configErrorf("batch %d is larger than the pool size %d", c.Batch, c.PoolSize)
	case c.Scenario == ScenarioNoop:
		if c.Preload > 0 || c.DBPath != "" || c.NoSync {
			return configErrorf("noop has no database: --preload, --db and --nosync do not apply")
		}
	case c.InProcess == (c.URL != ""):
		return configErrorf("give exactly one of --url and --inprocess")
	case c.URL != "" && c.Dev == (c.Token != ""):
		return configErrorf("with --url give exactly one of --dev and --token")
	case c.Token != "" && !kpd.ValidDID(c.DID):
		return configErrorf("--token needs the token's DID in --did")
	case !c.InProcess && (c.Preload > 0 || c.CPUProfile != "" || c.DBPath != "" || c.NoSync):
		return configErrorf("--preload, --cpuprofile, --db and --nosync need --inprocess")
	}
	if c.Token != "" && c.Workers > maxDevicesOneDID {
		// One DID has at most 20 devices, and each worker owns its own.
		c.Workers = maxDevicesOneDID
	}
	return nil
}

// maxDevicesOneDID is kpd's default --max-devices.
const maxDevicesOneDID = 20

// Run performs one benchmark run: it prepares identities and KeyPackages,
// optionally starts kpd in-process and preloads it, fills pools, runs the
// timed phase and returns the report. It returns a config error (see
// IsConfigError) for an invalid Config and stops early when ctx is done.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	suite, ok := mls.NewRegistry().Lookup(mls.CipherSuite(cfg.Suite))
	if !ok {
		return nil, configErrorf("cipher suite %d is not built in", cfg.Suite)
	}
	r := &runner{cfg: cfg, suite: suite, runID: randomHex(4)}
	r.report = &Report{
		Scenario: cfg.Scenario,
		Date:     time.Now().UTC(),
		Machine:  machine(),
		Suite:    cfg.Suite,
		Workers:  cfg.Workers,
		Rate:     cfg.Rate,
	}
	if cfg.Scenario == ScenarioPublish {
		r.report.Batch = cfg.Batch
	}
	defer r.close()
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	if err := r.prepare(ctx); err != nil {
		return nil, err
	}
	if err := r.timed(ctx); err != nil {
		return nil, err
	}
	return r.report, nil
}

// runner holds the state of one run.
type runner struct {
	cfg    Config
	suite  mls.Suite
	runID  string
	report *Report

	url string
	// db is the in-process store, nil against a URL.
	db      *kv.DB
	commits *commitTimes // the in-process store's commit times
	closers []func() error
	hc      *http.Client
	workers []*worker
}

func (r *runner) logf(format string, args ...any) {
	if r.cfg.Log != nil {
		fmt.Fprintf(r.cfg.Log, format+"\n", args...)
	}
}

func (r *runner) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		if err := r.closers[i](); err != nil {
			r.logf("bench: close: %v", err)
		}
	}
}

// start finds or starts the server under test and preloads it.
func (r *runner) start(ctx context.Context) error {
	cfg := r.cfg
	r.hc = &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			MaxIdleConns:        2 * cfg.Workers,
			MaxIdleConnsPerHost: 2 * cfg.Workers,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	closeIdle := func() error { r.hc.CloseIdleConnections(); return nil }
	r.closers = append(r.closers, closeIdle)
	switch {
	case cfg.Scenario == ScenarioNoop:
		url, stop, err := startNoopServer()
		if err != nil {
			return err
		}
		r.url = url
		// Closers run last first: the client's idle connections close
		// before the server shuts down, which would otherwise wait 5 s
		// for a connection that was opened but never sent a request.
		r.closers = append(r.closers, stop, closeIdle)
		r.report.Target = "in-process noop handler"
		return nil
	case cfg.URL != "":
		r.url = cfg.URL
		r.report.Target = cfg.URL
		return nil
	}
	path := cfg.DBPath
	if path == "" {
		dir, err := os.MkdirTemp("", "kpd-bench-")
		if err != nil {
			return err
		}
		r.closers = append(r.closers, func() error { return os.RemoveAll(dir) })
		path = filepath.Join(dir, "bench.db")
	}
	r.commits = &commitTimes{}
	srv, err := StartServer(ServerConfig{Path: path, NoSync: cfg.NoSync, Observer: r.commits})
	if err != nil {
		return err
	}
	r.url, r.db = srv.URL, srv.DB
	r.closers = append(r.closers, srv.Close, closeIdle)
	r.report.Target = "in-process (" + path + ")"
	if cfg.NoSync {
		r.report.Target += " without fsync"
	}
	if cfg.Preload > 0 {
		start := time.Now()
		n, err := preload(ctx, srv.DB, preloadConfig{
			count:    cfg.Preload,
			perDev:   cfg.PoolSize,
			suite:    cfg.Suite,
			runID:    r.runID,
			now:      time.Now(),
			progress: r.cfg.Progress,
		})
		r.report.Preloaded = n
		r.report.PreloadSeconds = time.Since(start).Seconds()
		if err != nil {
			return fmt.Errorf("preload: %w", err)
		}
		r.logf("preloaded %d synthetic KeyPackages in %.1fs", n, r.report.PreloadSeconds)
	}
	return nil
}

// timed runs the workers until the count, the duration or the KeyPackages
// run out, with the CPU profile (if asked) covering exactly this phase.
func (r *runner) timed(ctx context.Context) error {
	cfg := r.cfg
	runCtx := ctx
	if cfg.Count == 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	var storeBefore kv.WriteStats
	if r.db != nil {
		storeBefore = r.db.WriteStats()
		r.commits.start()
	}
	var done atomic.Int64
	var exhausted atomic.Bool
	start := time.Now()
	stopProgress := r.progress(start, &done)
	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace := newPacer(start, cfg.Rate, cfg.Workers, w.id)
			for n := 0; cfg.Count == 0 || n < w.quota; n++ {
				if !pace.wait(runCtx) {
					return
				}
				if !w.step(runCtx) {
					exhausted.Store(true)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProgress()
	if err := ctx.Err(); err != nil {
		return err
	}

	rec := newRecorder()
	for _, w := range r.workers {
		rec.merge(w.rec)
	}
	r.report.Seconds = elapsed.Seconds()
	r.report.Operations, r.report.Errors = rec.reports(elapsed)
	if r.db != nil {
		after := r.db.WriteStats()
		r.report.Store = &StoreReport{
			Commits:      after.Commits - storeBefore.Commits,
			Operations:   after.Operations - storeBefore.Operations,
			PagesWritten: after.PagesWritten - storeBefore.PagesWritten,
		}
		if took := r.commits.stop(); len(took) > 0 {
			r.report.Store.CommitP50Ms = ms(percentile(took, 50))
			r.report.Store.CommitP99Ms = ms(percentile(took, 99))
			r.report.Store.CommitMaxMs = ms(took[len(took)-1])
		}
	}
	switch {
	case exhausted.Load():
		r.report.Stopped = stoppedExhausted
	case cfg.Count > 0:
		r.report.Stopped = stoppedCount
	default:
		r.report.Stopped = stoppedDuration
	}
	return nil
}

// progress prints a progress line every second until the returned function
// is called.
func (r *runner) progress(start time.Time, done *atomic.Int64) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprintln(r.cfg.Progress)
				return
			case now := <-t.C:
				secs := now.Sub(start).Seconds()
				n := done.Load()
				fmt.Fprintf(r.cfg.Progress, "\r%s: %6.1fs %10d ops %10.0f ops/s", r.cfg.Scenario, secs, n, float64(n)/secs)
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// pacer spaces one worker's operations so that all workers together run
// rate operations per second; worker i starts i/workers of an interval
// late so that the workers do not fire together.
type pacer struct {
	next     time.Time
	interval time.Duration
}

func newPacer(start time.Time, rate float64, workers, i int) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	interval := time.Duration(float64(workers) / rate * float64(time.Second))
	return &pacer{next: start.Add(interval * time.Duration(i) / time.Duration(workers)), interval: interval}
}

// wait blocks until the next operation is due; false means ctx is done.
func (p *pacer) wait(ctx context.Context) bool {
	if p.interval > 0 {
		if d := time.Until(p.next); d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
		p.next = p.next.Add(p.interval)
	}
	return ctx.Err() == nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b)
}

// codeOf returns the kpd error code of a failure: the server's (a client
// error), the bench's own check's, or a transport-level name for requests
// that never got an answer.
func codeOf(err error) kpd.Code {
	var ce *client.Error
	var ke *kpd.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code
	case errors.As(err, &ke):
		return ke.Code
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "Canceled"
	default:
		return "Transport"
	}
}

// Machine describes the host a report was measured on.
type Machine struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpu_model"`
	MemoryBytes uint64 `json:"memory_bytes"`
	GoVersion   string `json:"go_version"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
}

func machine() Machine {
	return Machine{
		CPUs:        runtime.NumCPU(),
		CPUModel:    cpuModel(),
		MemoryBytes: memTotal(),
		GoVersion:   runtime.Version(),
		OS:          runtime.GOOS,
		Arch:        runtime.GOARCH,
	}
}
