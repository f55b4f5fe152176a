package backup

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/ctxio"
)

// Defaults of Scheduler.
const (
	DefaultInterval = time.Hour
	DefaultKeep     = 24
)

// Scheduler takes a snapshot of Source into Dir every Interval, named by
// Name, and then deletes all but the newest Keep snapshots (with their
// checksum files) that it finds in Dir. Other files in Dir are left alone.
//
// The first snapshot is taken at once when Dir holds none newer than
// Interval, otherwise one Interval after the newest: a server restarted
// more often than Interval still takes its snapshots. A failed snapshot is
// logged and tried again after Interval.
type Scheduler struct {
	// Source is the database to snapshot (*kv.DB); required.
	Source Source
	// Dir is the directory of the snapshots; it must exist.
	Dir string
	// Interval is the time between snapshots; 0 means DefaultInterval.
	Interval time.Duration
	// Keep is how many snapshots to keep; 0 means DefaultKeep.
	Keep int
	// Clock names the snapshots and schedules the first one; nil means
	// time.Now. The waiting between snapshots uses real timers.
	Clock kpd.Clock
	// Logger receives a line per snapshot and per failure.
	Logger zerolog.Logger
	// OnSuccess, when set, is called with the time of each snapshot
	// written (for the backup_last_success_timestamp_seconds metric).
	OnSuccess func(time.Time)

	last atomic.Int64 // Unix nanoseconds of the newest snapshot; 0 for none
}

// Run takes snapshots until ctx is done; a snapshot in progress is then
// abandoned (its temporary file removed) and Run returns.
func (s *Scheduler) Run(ctx context.Context) {
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	removeStaleTemps(s.Dir, namePrefix+"*"+nameSuffix)
	names, err := s.snapshots()
	if err != nil {
		s.Logger.Error().Err(err).Str("dir", s.Dir).Msg("backup: list snapshots")
	}
	// The newest snapshot taken at a time not after now decides when the
	// next one is due. One named later than now was taken while the clock
	// was ahead: it neither delays the next nor counts as the last
	// success, which would keep a backup-age alert quiet.
	var wait time.Duration
	now := s.Clock.Now()
	for i := len(names) - 1; i >= 0; i-- {
		at, _ := parseName(names[i])
		if at.After(now) {
			s.Logger.Warn().Str("dir", s.Dir).Str("snapshot", names[i]).Msg("backup: a snapshot is named after the current time; the clock was ahead when it was taken, or is behind now")
			continue
		}
		s.last.Store(at.UnixNano())
		wait = min(interval, max(0, at.Add(interval).Sub(now)))
		break
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		s.snapshot(ctx)
		timer.Reset(interval)
	}
}

// LastSuccess returns the time of the newest snapshot this Scheduler wrote
// or found in Dir when it started; the zero time if there is none.
func (s *Scheduler) LastSuccess() time.Time {
	n := s.last.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// snapshot takes one snapshot and prunes old ones. Failures are logged,
// except those caused by ctx ending (shutdown).
func (s *Scheduler) snapshot(ctx context.Context) {
	start := time.Now()
	at := s.Clock.Now()
	info, err := Snapshot(contextSource{ctx: ctx, src: s.Source}, s.Dir, Name(at))
	if err != nil {
		if ctx.Err() == nil {
			s.Logger.Error().Err(err).Str("dir", s.Dir).Msg("backup failed")
		}
		return
	}
	s.last.Store(at.UnixNano())
	s.Logger.Info().
		Str("path", info.Path).
		Int64("bytes", info.Size).
		Dur("duration", time.Since(start)).
		Msg("backup written")
	if s.OnSuccess != nil {
		s.OnSuccess(at)
	}
	if err := s.prune(Name(at), at); err != nil {
		s.Logger.Error().Err(err).Str("dir", s.Dir).Msg("backup: delete old snapshots")
	}
}

// snapshots returns the names of the snapshot files in Dir, oldest first.
func (s *Scheduler) snapshots() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if _, ok := parseName(e.Name()); ok && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names) // names sort in time order
	return names, nil
}

// prune deletes all but the newest Keep snapshots, never just (the one
// just written at now). Snapshots named after now, taken while the clock
// was ahead, count as the oldest: they go first. The checksum file goes
// first, so that an interrupted prune leaves a snapshot that the next one
// deletes, never an orphaned checksum file.
func (s *Scheduler) prune(just string, now time.Time) error {
	keep := s.Keep
	if keep <= 0 {
		keep = DefaultKeep
	}
	names, err := s.snapshots()
	if err != nil {
		return err
	}
	ahead := func(name string) bool { at, _ := parseName(name); return at.After(now) }
	slices.SortStableFunc(names, func(a, b string) int { // future ones first, each part in time order
		switch fa, fb := ahead(a), ahead(b); {
		case fa && !fb:
			return -1
		case fb && !fa:
			return 1
		}
		return strings.Compare(a, b)
	})
	names = slices.DeleteFunc(names, func(n string) bool { return n == just })
	for _, name := range names[:max(0, len(names)-(keep-1))] {
		path := filepath.Join(s.Dir, name)
		if err := os.Remove(path + ChecksumSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	return nil
}

// contextSource stops a snapshot when ctx ends, so that shutting down does
// not wait for a large snapshot to finish.
type contextSource struct {
	ctx context.Context
	src Source
}

func (c contextSource) WriteSnapshot(w io.Writer) (int64, error) {
	return c.src.WriteSnapshot(ctxio.Writer(c.ctx, w))
}
