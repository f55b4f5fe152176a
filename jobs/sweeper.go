// Package jobs runs kpd's background loops that are not part of a request:
// the sweeper, which removes what the retention settings let go (SPEC
// section 8).
package jobs

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/kv"
)

// DefaultSweepInterval is the default of Sweeper.Interval.
const DefaultSweepInterval = time.Minute

// SweepStore is the store the sweeper sweeps; *kv.DB implements it.
type SweepStore interface {
	Sweep(ctx context.Context, now time.Time) (kv.SweepStats, error)
}

// SweepObserver hears about every sweep, for metrics; *metrics.Metrics
// implements it.
type SweepObserver interface {
	// Swept reports what one sweep did: it is called for every kind
	// (see SweepKinds), with n = 0 too.
	Swept(kind string, n int)
	// SweepFailed reports a sweep that ended with an error.
	SweepFailed()
}

// SweepKinds name the counts of kv.SweepStats, as passed to
// SweepObserver.Swept (the kind label of kpd_sweep_deleted_total).
var SweepKinds = []struct {
	Name  string
	Count func(kv.SweepStats) int
}{
	{"expired_key_packages", func(s kv.SweepStats) int { return s.ExpiredKeyPackages }},
	{"claims_purged", func(s kv.SweepStats) int { return s.ClaimsPurged }},
	{"consumed_purged", func(s kv.SweepStats) int { return s.ConsumedPurged }},
	{"deliveries_expired", func(s kv.SweepStats) int { return s.DeliveriesExpired }},
	{"deliveries_purged", func(s kv.SweepStats) int { return s.DeliveriesPurged }},
	{"welcomes_purged", func(s kv.SweepStats) int { return s.WelcomesPurged }},
}

// Sweeper calls Store.Sweep at start and then every Interval. Configure it
// before Run.
type Sweeper struct {
	// Store is swept; required.
	Store SweepStore
	// Interval is the time between sweeps; 0 means DefaultSweepInterval.
	Interval time.Duration
	// Clock gives the time each sweep sweeps up to; nil means time.Now.
	// The waiting between sweeps uses real timers.
	Clock kpd.Clock
	// Logger receives a line per sweep: at debug level when nothing was
	// due, at info level when something was swept, at error level when a
	// sweep failed.
	Logger zerolog.Logger
	// Observer, when set, hears about every sweep.
	Observer SweepObserver
}

// Run sweeps until ctx is done, then returns. A sweep in progress stops
// between two of its transactions; its end is neither logged nor counted
// as a failure.
func (s *Sweeper) Run(ctx context.Context) {
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultSweepInterval
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		s.sweep(ctx)
		timer.Reset(interval)
	}
}

// sweep runs one sweep and reports it.
func (s *Sweeper) sweep(ctx context.Context) {
	start := time.Now()
	st, err := s.Store.Sweep(ctx, s.Clock.Now())
	// What committed before an error counts too.
	total := 0
	for _, k := range SweepKinds {
		n := k.Count(st)
		total += n
		if s.Observer != nil {
			s.Observer.Swept(k.Name, n)
		}
	}
	switch {
	case err != nil && ctx.Err() != nil:
		// Shutting down: not a failure.
	case err != nil:
		if s.Observer != nil {
			s.Observer.SweepFailed()
		}
		s.Logger.Error().Err(err).Dict("swept", sweepFields(st)).Msg("sweep failed")
	default:
		level := zerolog.DebugLevel
		if total > 0 {
			level = zerolog.InfoLevel
		}
		s.Logger.WithLevel(level).
			Dict("swept", sweepFields(st)).
			Int("transactions", st.Transactions).
			Dur("duration", time.Since(start)).
			Msg("sweep")
	}
}

// sweepFields are the counts of st as log fields, by kind.
func sweepFields(st kv.SweepStats) *zerolog.Event {
	d := zerolog.Dict()
	for _, k := range SweepKinds {
		d = d.Int(k.Name, k.Count(st))
	}
	return d
}
