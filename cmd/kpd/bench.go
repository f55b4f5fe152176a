package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/kpd-dir/kpd/bench"
)

// bench runs `kpd bench`: the load generator of package bench against a
// running kpd (--url) or one started in-process (--inprocess). Unlike the
// other commands it reads no KPD_* variables, so that it never picks up a
// server's --db from the environment and writes benchmark data into it.
func (m *Main) bench(ctx context.Context, args []string) error {
	var c bench.Config
	var suite uint
	var asJSON bool
	fs := newFlagSet("bench", m.Stderr, "")
	fs.Usage = func() {
		fmt.Fprint(m.Stderr, "usage: kpd bench (--inprocess | --url URL (--dev | --token T --did DID)) [flags]\n\n"+
			"flags (bench reads no KPD_* variables):\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Scenario, "scenario", bench.ScenarioClaim, "`scenario`: "+strings.Join(bench.Scenarios, ", "))
	fs.StringVar(&c.URL, "url", "", "base `URL` of a running kpd")
	fs.BoolVar(&c.Dev, "dev", false, "the server at --url uses dev authentication: make up DIDs (Bearer <did>)")
	fs.StringVar(&c.Token, "token", "", "API `token` for the server at --url (one DID: at most 20 devices and workers)")
	fs.StringVar(&c.DID, "did", "", "the `DID` of --token")
	fs.BoolVar(&c.InProcess, "inprocess", false, "start kpd in this process (temporary database, fsync on, dev authentication)")
	fs.StringVar(&c.DBPath, "db", "", "in-process database `file` (kept after the run; default a temporary file)")
	fs.IntVar(&c.Preload, "preload", 0, "in-process: first store `N` synthetic KeyPackages directly (large-database figures)")
	fs.BoolVar(&c.NoSync, "nosync", false, "in-process: no fsync after commits (a diagnostic of what the disk costs; never in production)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "in-process: write a CPU profile of the timed phase to `file`")
	fs.UintVar(&suite, "suite", bench.DefaultSuite, "cipher `suite` of the KeyPackages (1-7)")
	fs.IntVar(&c.Workers, "workers", bench.DefaultWorkers, "concurrent clients")
	fs.DurationVar(&c.Duration, "duration", 0, "length of the timed phase (default 10s unless --count is given)")
	fs.IntVar(&c.Count, "count", 0, "run exactly `N` operations (publish batches, claims, round trips, mix steps) instead of a duration")
	fs.Float64Var(&c.Rate, "rate", 0, "pace all workers together to `N` operations per second (default: as fast as possible)")
	fs.IntVar(&c.Batch, "batch", bench.DefaultBatch, "KeyPackages per publish")
	fs.IntVar(&c.KeyPackages, "keypackages", 0, "KeyPackages to make before the timed phase (default: what --count needs, or an estimate for --duration)")
	fs.IntVar(&c.PoolSize, "pool-size", bench.DefaultPoolSize, "KeyPackages per device (at most the server's --max-available)")
	fs.IntVar(&c.DevicesPerDID, "devices-per-did", bench.DefaultDevicesPerDID, "devices of each made-up DID (at most the server's --max-devices)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	noEnv := func(string) string { return "" }
	if err := parseArgs(fs, args, noEnv, "bench"); err != nil {
		return err
	}
	if suite == 0 || suite > 0xffff {
		return usageErrorf("--suite %d: want a cipher suite number", suite)
	}
	c.Suite = uint16(suite)
	c.Log = m.Stderr
	if f, ok := m.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		c.Progress = m.Stderr
	}

	if c.InProcess {
		setServeGC(m.Getenv)
	}
	report, err := bench.Run(ctx, c)
	if bench.IsConfigError(err) {
		return usageErrorf("%v", err)
	}
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(m.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	return report.WriteText(m.Stdout)
}
