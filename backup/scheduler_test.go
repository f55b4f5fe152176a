package backup_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/internal/testkit"
)

// stepClock returns a clock, starting at start, that moves a minute
// forward each time it is read.
func stepClock(start time.Time) func() time.Time {
	c := testkit.NewClock(start)
	return func() time.Time { return c.Advance(time.Minute) }
}

func TestSchedulerKeepsNewest(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	publish(t, db, "did:plc:alice", 3)
	dir := t.TempDir()
	// An old snapshot from an earlier run is pruned too; other files stay.
	old, err := backup.Snapshot(db, dir, backup.Name(t0.Add(-48*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(other, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var taken []time.Time
	logs := &testkit.SyncBuffer{}
	s := &backup.Scheduler{
		Source: db, Dir: dir, Interval: 5 * time.Millisecond, Keep: 3, Clock: stepClock(t0),
		Logger: zerolog.New(logs),
		OnSuccess: func(at time.Time) {
			mu.Lock()
			defer mu.Unlock()
			taken = append(taken, at)
		},
	}
	stop := testkit.Start(t, s.Run)
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(taken) >= 6
	})
	stop()

	mu.Lock()
	newest := slices.Clone(taken[len(taken)-3:])
	last := taken[len(taken)-1]
	mu.Unlock()
	want := []string{"notes.txt"}
	for _, at := range newest {
		want = append(want, backup.Name(at), backup.Name(at)+".sha256")
	}
	slices.Sort(want)
	if got := dirNames(t, dir); !slices.Equal(got, want) {
		t.Errorf("directory holds %v, want %v", got, want)
	}
	if _, err := os.Stat(old.Path); err == nil {
		t.Errorf("old snapshot %s was kept", old.Path)
	}
	for _, at := range newest {
		if err := backup.Verify(filepath.Join(dir, backup.Name(at)), nil); err != nil {
			t.Errorf("kept snapshot: %v", err)
		}
	}
	if got := s.LastSuccess(); !got.Equal(last) {
		t.Errorf("LastSuccess = %v, want %v", got, last)
	}
	if !strings.Contains(logs.String(), "backup written") {
		t.Errorf("no log line for a snapshot:\n%s", logs)
	}
}

func TestSchedulerWaitsForInterval(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "live.db"))
	dir := t.TempDir()
	recent := t0.Add(-10 * time.Minute)
	if _, err := backup.Snapshot(db, dir, backup.Name(recent)); err != nil {
		t.Fatal(err)
	}
	s := &backup.Scheduler{Source: db, Dir: dir, Interval: time.Hour, Clock: func() time.Time { return t0 }}
	stop := testkit.Start(t, s.Run)
	time.Sleep(100 * time.Millisecond)
	stop()
	if got := dirNames(t, dir); len(got) != 2 {
		t.Errorf("a snapshot younger than the interval did not defer the next one: %v", got)
	}
	if got := s.LastSuccess(); !got.Equal(recent) {
		t.Errorf("LastSuccess = %v, want the newest snapshot's time %v", got, recent)
	}
}

func TestSchedulerFailuresAndShutdown(t *testing.T) {
	dir := t.TempDir()
	logs := &testkit.SyncBuffer{}
	var mu sync.Mutex
	attempts := 0
	failing := backup.SourceFunc(func(io.Writer) (int64, error) {
		mu.Lock()
		defer mu.Unlock()
		attempts++
		return 0, errors.New("disk on fire")
	})
	s := &backup.Scheduler{Source: failing, Dir: dir, Interval: 5 * time.Millisecond, Clock: stepClock(t0),
		Logger: zerolog.New(logs)}
	stop := testkit.Start(t, s.Run)
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return attempts >= 3
	})
	stop()
	if !strings.Contains(logs.String(), "disk on fire") || !strings.Contains(logs.String(), "backup failed") {
		t.Errorf("failure not logged:\n%s", logs)
	}
	if !s.LastSuccess().IsZero() {
		t.Errorf("LastSuccess = %v after failures only", s.LastSuccess())
	}

	// A snapshot in progress stops with the context, silently, and leaves
	// no temporary file.
	logs = &testkit.SyncBuffer{}
	writing := make(chan struct{})
	var once sync.Once
	endless := backup.SourceFunc(func(w io.Writer) (int64, error) {
		chunk := make([]byte, 4096)
		var n int64
		for {
			m, err := w.Write(chunk)
			n += int64(m)
			if err != nil {
				return n, err
			}
			once.Do(func() { close(writing) })
			time.Sleep(time.Millisecond)
		}
	})
	s = &backup.Scheduler{Source: endless, Dir: dir, Interval: time.Hour, Clock: stepClock(t0),
		Logger: zerolog.New(logs)}
	stop = testkit.Start(t, s.Run)
	<-writing
	stop()
	if l := logs.String(); l != "" {
		t.Errorf("shutdown logged:\n%s", l)
	}
	if got := dirNames(t, dir); len(got) != 0 {
		t.Errorf("an interrupted snapshot left %v", got)
	}
}
