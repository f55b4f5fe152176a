package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kpd-dir/kpd/kv"
)

// errViolations is returned by verify when the database breaks an invariant.
var errViolations = errors.New("invariant violations found")

// verify runs `kpd verify --db FILE`: every invariant of the store over the
// whole file, one line per violation, exit status 1 if there is any.
func (m *Main) verify(_ context.Context, args []string) error {
	fs := newFlagSet("verify", m.Stderr, "verify [flags]")
	dbPath := fs.String("db", "kpd.db", "database `file` (opened read-only)")
	timeout := new(time.Duration)
	durationVar(fs, timeout, "timeout", time.Second, "how long to wait for the file lock (more than 0)")
	if err := parseArgs(fs, args, m.Getenv, "verify"); err != nil {
		return err
	}
	if err := positive("timeout", *timeout); err != nil {
		return err
	}
	if err := mustExist("--db", *dbPath, "give --db the database file to check"); err != nil {
		return err
	}
	violations, err := kv.VerifyFile(*dbPath, *timeout)
	if err != nil {
		return pathOnce(*dbPath, err)
	}
	for _, v := range violations {
		fmt.Fprintln(m.Stdout, v.String())
	}
	if len(violations) > 0 {
		return fmt.Errorf("%w: %d in %s", errViolations, len(violations), *dbPath)
	}
	fmt.Fprintf(m.Stdout, "%s: ok\n", *dbPath)
	return nil
}
