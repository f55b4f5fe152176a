package jobs_test

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/jobs"
	"github.com/kpd-dir/kpd/kv"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// counting records what a Sweeper reports.
type counting struct {
	mu     sync.Mutex
	swept  map[string]int
	calls  int // Swept calls of one kind: one per sweep
	failed int
}

func (c *counting) Swept(kind string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.swept == nil {
		c.swept = map[string]int{}
	}
	c.swept[kind] += n
	if kind == jobs.SweepKinds[0].Name {
		c.calls++
	}
}

func (c *counting) SweepFailed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed++
}

func (c *counting) get() (map[string]int, int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int{}
	for k, v := range c.swept {
		m[k] = v
	}
	return m, c.calls, c.failed
}

// run starts s and returns a function that stops it, failing the test if
// Run does not return promptly.
func run(t *testing.T, s *jobs.Sweeper) (stop func()) {
	t.Helper()
	return testkit.Start(t, s.Run)
}

func TestSweeperDeletesExpired(t *testing.T) {
	db, err := kv.Open(filepath.Join(t.TempDir(), "kpd.db"), &kv.Options{Clock: func() time.Time { return now }, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	kps := make([]kpd.KeyPackage, 5)
	for i := range kps {
		ref := make([]byte, 32)
		rand.Read(ref)
		kps[i] = kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: []byte("kp"),
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Duration(i+1) * time.Hour)}
	}
	if _, _, err := db.Publish(context.Background(), "did:plc:alice", "phone", kps); err != nil {
		t.Fatal(err)
	}

	obs, logs := &counting{}, &testkit.SyncBuffer{}
	// Three hours on: the KeyPackages that lived 1, 2 and 3 hours expired.
	run(t, &jobs.Sweeper{Store: db, Interval: 20 * time.Millisecond, Observer: obs,
		Clock: func() time.Time { return now.Add(3 * time.Hour) }, Logger: zerolog.New(logs).Level(zerolog.DebugLevel)})
	testkit.Eventually(t, "three sweeps", func() bool { _, calls, _ := obs.get(); return calls >= 3 })

	swept, _, failed := obs.get()
	if swept["expired_key_packages"] != 3 || failed != 0 {
		t.Fatalf("swept %v, %d failures; want 3 expired KeyPackages and no failure", swept, failed)
	}
	for _, k := range jobs.SweepKinds {
		if _, ok := swept[k.Name]; !ok {
			t.Errorf("kind %s never reported", k.Name)
		}
	}
	st, err := db.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Suites) != 1 || st.Suites[0].Available != 2 {
		t.Fatalf("stats after the sweep = %+v, want 2 available", st.Suites)
	}
	var info, debug int
	for _, l := range logs.JSONLines(t) {
		if l["message"] != "sweep" {
			t.Errorf("unexpected log line %v", l)
			continue
		}
		switch l["level"] {
		case "info":
			info++
			if swept := l["swept"].(map[string]any); swept["expired_key_packages"] != 3.0 {
				t.Errorf("info line %v does not report 3 expired KeyPackages", l)
			}
		case "debug":
			debug++
		}
	}
	if info != 1 || debug < 2 {
		t.Fatalf("%d info and %d debug sweep lines, want 1 info (the sweep that deleted) and the rest debug", info, debug)
	}
}

// failingStore fails every sweep, after a partial one. With entered set,
// it signals it and fails when ctx ends instead.
type failingStore struct{ entered chan struct{} }

func (f failingStore) Sweep(ctx context.Context, _ time.Time) (kv.SweepStats, error) {
	if f.entered != nil {
		close(f.entered)
		<-ctx.Done()
		return kv.SweepStats{ClaimsPurged: 1}, ctx.Err()
	}
	return kv.SweepStats{ClaimsPurged: 2}, errors.New("disk full")
}

func TestSweeperFailure(t *testing.T) {
	obs, logs := &counting{}, &testkit.SyncBuffer{}
	stop := run(t, &jobs.Sweeper{Store: failingStore{}, Interval: time.Hour, Observer: obs, Logger: zerolog.New(logs)})
	testkit.Eventually(t, "a failed sweep", func() bool { _, _, failed := obs.get(); return failed == 1 })
	stop()
	swept, _, _ := obs.get()
	if swept["claims_purged"] != 2 {
		t.Errorf("swept %v; what committed before the failure must count", swept)
	}
	lines := logs.JSONLines(t)
	if len(lines) != 1 || lines[0]["level"] != "error" || !strings.Contains(lines[0]["error"].(string), "disk full") {
		t.Fatalf("log = %v, want one error line", lines)
	}
}

// Shutting down during a sweep is neither logged nor a failure.
func TestSweeperStopsQuietly(t *testing.T) {
	obs, logs := &counting{}, &testkit.SyncBuffer{}
	entered := make(chan struct{})
	stop := run(t, &jobs.Sweeper{Store: failingStore{entered: entered}, Observer: obs, Logger: zerolog.New(logs)})
	<-entered
	stop()
	swept, _, failed := obs.get()
	if failed != 0 || swept["claims_purged"] != 1 {
		t.Fatalf("after shutdown: swept %v, %d failures; want the committed part counted and no failure", swept, failed)
	}
	if lines := logs.JSONLines(t); len(lines) != 0 {
		t.Fatalf("log = %v, want nothing", lines)
	}
}
