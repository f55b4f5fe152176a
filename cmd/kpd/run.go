package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/kv"
)

// version is set at build time with -ldflags "-X main.version=…"; when empty
// the module version from the build info is used.
var version string

// Main is the kpd program. Run executes one command; for `serve` it returns
// once the server is listening, Wait blocks until it should stop, and Close
// shuts it down in order (stop accepting, drain requests, close the
// database).
type Main struct {
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment (KPD_* variables); os.Getenv by default.
	Getenv func(string) string
	// Clock is injected into the store and validation; nil means time.Now.
	Clock kpd.Clock

	db              *kv.DB
	ln              net.Listener
	srv             *http.Server
	served          chan error
	logger          zerolog.Logger
	shutdownTimeout time.Duration
	// metricsLn and metricsSrv serve /metrics on --metrics-addr, when set.
	metricsLn  net.Listener
	metricsSrv *http.Server
	// stopJobs stop the background jobs (scheduled backups, the sweeper,
	// the webhook dispatcher); Close calls them after draining requests,
	// before closing the database.
	stopJobs []func()
}

// NewMain returns a Main wired to the process's standard streams and
// environment.
func NewMain() *Main {
	return &Main{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

const usage = `kpd: a directory of MLS KeyPackages and Welcome messages

usage:
  kpd serve [flags]           run the server (kpd serve -h lists the flags)
  kpd token create --did DID  create an API token (printed once)
  kpd token list              list tokens (ids, DIDs, creation times)
  kpd token revoke ID         revoke a token
                              (on a running server with --url and its admin token; kpd token -h)
  kpd verify --db FILE        check every store invariant (exit 1 on a violation)
  kpd backup -o FILE          snapshot a running server (--url) or a database file (--db)
  kpd restore --from FILE     verify a snapshot and replace the database (--db) with it
  kpd compact [--db FILE]     rewrite a database file to reclaim free space
  kpd bench [flags]           load generator: throughput and latency (kpd bench -h)
  kpd version                 print the version (also kpd --version)
`

// Run executes the command named by args[0].
func (m *Main) Run(ctx context.Context, args []string) error {
	if m.Getenv == nil {
		m.Getenv = os.Getenv
	}
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return usageErrorf("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return m.serve(ctx, rest)
	case "token":
		return m.token(ctx, rest)
	case "verify":
		return m.verify(ctx, rest)
	case "backup":
		return m.backup(ctx, rest)
	case "restore":
		return m.restore(ctx, rest)
	case "compact":
		return m.compact(ctx, rest)
	case "bench":
		return m.bench(ctx, rest)
	case "version", "-version", "--version":
		fmt.Fprintln(m.Stdout, "kpd", versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(m.Stdout, usage)
		return nil
	default:
		fmt.Fprint(m.Stderr, usage)
		return usageErrorf("unknown command %q", cmd)
	}
}

// Addr is the address the server listens on, once serve has started.
func (m *Main) Addr() string {
	if m.ln == nil {
		return ""
	}
	return m.ln.Addr().String()
}

// MetricsAddr is the address of the --metrics-addr listener, once serve
// has started; "" without one (the metrics are then on Addr).
func (m *Main) MetricsAddr() string {
	if m.metricsLn == nil {
		return ""
	}
	return m.metricsLn.Addr().String()
}

// Wait blocks until ctx is done or the server stops on its own; it returns
// at once for commands other than serve.
func (m *Main) Wait(ctx context.Context) error {
	if m.served == nil {
		return nil
	}
	select {
	case <-ctx.Done():
		m.logger.Info().Str("shutdown_timeout", formatDuration(m.shutdownTimeout)).
			Msg("shutting down: waiting for the requests in flight (a second SIGINT or SIGTERM stops at once)")
		return nil
	case err := <-m.served:
		m.served = nil
		if err != nil {
			m.logger.Error().Err(err).Msg("server stopped")
			return loggedError{err}
		}
		return nil
	}
}

// loggedError is an error that kpd serve has written to its log already;
// main exits with status 1 without printing it again.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// Close stops the server gracefully (in-flight requests may finish within the
// shutdown timeout; waiting long-polls end at once), stops the background
// jobs and closes the database. It is safe to call more than once.
func (m *Main) Close() error {
	return m.Shutdown(context.Background())
}

// Shutdown is Close, cut short when ctx is done (kpd serve's second SIGINT
// or SIGTERM): the connections of the requests still in flight are then
// closed at once, as they are when the shutdown timeout passes. How a
// drain that was cut short ended is logged.
func (m *Main) Shutdown(ctx context.Context) error {
	var errs []error
	for _, srv := range []*http.Server{m.srv, m.metricsSrv} {
		if srv != nil {
			errs = append(errs, m.drain(ctx, srv))
		}
	}
	m.srv, m.metricsSrv = nil, nil
	for _, stop := range m.stopJobs {
		stop()
	}
	m.stopJobs = nil
	if m.db != nil {
		if err := m.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close database: %w", err))
		}
		m.db = nil
	}
	return errors.Join(errs...)
}

// drain shuts srv down: it stops accepting connections and waits for the
// requests in flight, for the shutdown timeout or until ctx is done, then
// closes the connections left.
func (m *Main) drain(ctx context.Context, srv *http.Server) error {
	timeout, cancel := context.WithTimeout(ctx, m.shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(timeout)
	if err == nil {
		return nil
	}
	srv.Close()
	switch {
	case ctx.Err() != nil:
		m.logger.Error().Msg("shutdown cut short by a second signal: closed the connections of the requests in flight")
		return loggedError{errors.New("shutdown cut short by a second signal")}
	case errors.Is(err, context.DeadlineExceeded):
		d := formatDuration(m.shutdownTimeout)
		m.logger.Error().Str("shutdown_timeout", d).
			Msg("requests still in flight after --shutdown-timeout: closed their connections; raise --shutdown-timeout to let them finish")
		return loggedError{fmt.Errorf("shutdown: requests still in flight after --shutdown-timeout %s", d)}
	default:
		return fmt.Errorf("shutdown: %w", err)
	}
}

// startJob runs job in the background until Close, which cancels its
// context and waits for it to return. The job outlives ctx's
// cancellation: it stops with the server, after the requests drained.
func (m *Main) startJob(ctx context.Context, job func(context.Context)) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		job(ctx)
	}()
	m.stopJobs = append(m.stopJobs, func() {
		cancel()
		<-done
	})
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// newStdLogger adapts the logger for net/http's own error messages.
func newStdLogger(l zerolog.Logger) *log.Logger {
	return log.New(stdLogWriter{l.With().Str("component", "http").Logger()}, "", 0)
}

type stdLogWriter struct{ l zerolog.Logger }

func (w stdLogWriter) Write(p []byte) (int, error) {
	w.l.Warn().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
