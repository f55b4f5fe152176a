package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
)

// minAdminTokenLength is the shortest admin token `kpd serve` accepts.
const minAdminTokenLength = 16

// adminTokenFlags are --admin-token and --admin-token-file, of `kpd serve`,
// `kpd backup` and `kpd token`.
type adminTokenFlags struct {
	token, file string
}

func (f *adminTokenFlags) register(fs *flag.FlagSet, usage string) {
	fs.StringVar(&f.token, "admin-token", "", usage+" (prefer --admin-token-file or KPD_ADMIN_TOKEN: a flag shows in ps)")
	fs.StringVar(&f.file, "admin-token-file", "", "read the admin token from this `file` (surrounding white space ignored)")
}

// errAdminOff is the error of a command whose --url server has its admin
// routes off (it was started without an admin token).
var errAdminOff = errors.New("the server has its admin routes off")

// adminRoutesOff explains err, of an admin request to the server at base,
// if the server answered that its admin routes are off
// (httpapi.ReasonAdminRoutesOff). Other errors are returned as they are.
func adminRoutesOff(base string, err error) error {
	var ke *kpd.Error
	if !errors.As(err, &ke) || ke.Reason != httpapi.ReasonAdminRoutesOff {
		return err
	}
	return fmt.Errorf("%w: %s answers 404 on /v1/admin/; restart that kpd serve with --admin-token-file FILE "+
		"or KPD_ADMIN_TOKEN (at least %d characters) to turn them on, and give this command the same token",
		errAdminOff, base, minAdminTokenLength)
}

// value returns the admin token, "" when neither flag is set.
func (f *adminTokenFlags) value() (string, error) {
	return readSecret("admin-token", f.token, f.file)
}

// required is value for a command that calls the admin routes of --url:
// a missing token is a usage error of cmd.
func (f *adminTokenFlags) required(cmd string) (string, error) {
	tok, err := f.value()
	if err == nil && tok == "" {
		err = usageErrorf("%s: --url needs --admin-token, --admin-token-file or KPD_ADMIN_TOKEN", cmd)
	}
	return tok, err
}

// serverToken is value for `kpd serve`, which refuses a short token.
func (f *adminTokenFlags) serverToken() (string, error) {
	tok, err := f.value()
	if err == nil && tok != "" && len(tok) < minAdminTokenLength {
		err = usageErrorf("the admin token must have at least %d characters (for example: openssl rand -base64 32)", minAdminTokenLength)
	}
	return tok, err
}

// backupFlags are the scheduled-backup flags of `kpd serve`.
type backupFlags struct {
	dir      string
	interval time.Duration
	keep     int
}

func (f *backupFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dir, "backup-dir", "", "take scheduled snapshots into this `directory` (created if missing; off when empty)")
	durationVar(fs, &f.interval, "backup-interval", backup.DefaultInterval, "time between scheduled snapshots")
	fs.IntVar(&f.keep, "backup-keep", backup.DefaultKeep, "how many scheduled snapshots to keep")
}

// check validates the flags and creates the backup directory, so that a
// mistake stops `kpd serve` at start.
func (f *backupFlags) check() error {
	if f.dir == "" {
		return nil
	}
	if f.interval < time.Second {
		return usageErrorf("--backup-interval %s: want at least 1s", f.interval)
	}
	if f.keep < 1 {
		return usageErrorf("--backup-keep %d: want at least 1", f.keep)
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return fmt.Errorf("--backup-dir: %w", err)
	}
	return nil
}

// startBackups starts the backup scheduler of f, if any, and returns it
// (nil when backups are off); Close stops it.
func (m *Main) startBackups(ctx context.Context, f backupFlags, src backup.Source, logger zerolog.Logger) *backup.Scheduler {
	if f.dir == "" {
		return nil
	}
	s := &backup.Scheduler{
		Source:   src,
		Dir:      f.dir,
		Interval: f.interval,
		Keep:     f.keep,
		Clock:    m.Clock,
		Logger:   logger.With().Str("component", "backup").Logger(),
	}
	m.startJob(ctx, s.Run)
	logger.Info().Str("dir", f.dir).Dur("interval", f.interval).Int("keep", f.keep).Msg("scheduled backups on")
	return s
}

// backup runs `kpd backup`: a snapshot of a running server's database
// through its admin route (--url), or of a database file that no server
// has open (--db), written to -o FILE through a temporary file that is
// fsynced and renamed, with FILE.sha256 beside it.
func (m *Main) backup(ctx context.Context, args []string) error {
	fs := newFlagSet("backup", m.Stderr, "backup (--url URL --admin-token-file FILE | --db FILE) -o SNAPSHOT")
	url := fs.String("url", "", "base `URL` of a running kpd to fetch the snapshot from (GET /v1/admin/backup), e.g. http://127.0.0.1:8080")
	var admin adminTokenFlags
	admin.register(fs, "the server's admin `token`, with --url")
	dbPath := fs.String("db", "kpd.db", "database `file` to snapshot when no --url is given (it must not be in use)")
	out := fs.String("o", "", "the snapshot `file` to write (required); FILE.sha256 is written beside it")
	timeout := new(time.Duration)
	durationVar(fs, timeout, "timeout", time.Second, "how long to wait for the lock of --db (more than 0)")
	if err := parseArgs(fs, args, m.Getenv, "backup"); err != nil {
		return err
	}
	if *out == "" {
		return usageErrorf("backup: -o FILE is required")
	}
	if err := positive("timeout", *timeout); err != nil {
		return err
	}
	var token string
	if *url != "" {
		if err := checkURL(*url); err != nil {
			return err
		}
		var err error
		if token, err = admin.required("backup"); err != nil {
			return err
		}
	}
	if err := dirMustExist("-o", *out); err != nil {
		return err
	}

	bar := m.newProgressBar("backup")
	var src backup.Source
	if *url != "" {
		src = backup.SourceFunc(func(w io.Writer) (int64, error) {
			n, err := backup.Download(ctx, *url, token, w, bar.update)
			return n, adminRoutesOff(*url, err)
		})
	} else {
		if err := mustExist("--db", *dbPath, "give --db the database file to snapshot, or --url to snapshot a running server"); err != nil {
			return err
		}
		db, err := openDB(*dbPath, &kv.Options{ReadOnly: true, OpenTimeout: *timeout})
		if errors.Is(err, kv.ErrInUse) {
			return fmt.Errorf("%w; to snapshot a running server, use --url URL with its admin token", err)
		}
		if err != nil {
			return err
		}
		defer db.Close()
		size, err := db.Size()
		if err != nil {
			return err
		}
		src = backup.SourceFunc(func(w io.Writer) (int64, error) {
			return db.WriteSnapshot(io.MultiWriter(w, bar.counter(size)))
		})
	}
	info, err := backup.Snapshot(src, filepath.Dir(*out), filepath.Base(*out))
	bar.finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(m.Stderr, "wrote %s (%s, sha256 %s)\n", info.Path, formatBytes(info.Size), info.SHA256)
	return nil
}

// restore runs `kpd restore`: verify a snapshot (checksum and invariants)
// and atomically replace the database with it, refusing while a server has
// the database open.
func (m *Main) restore(_ context.Context, args []string) error {
	fs := newFlagSet("restore", m.Stderr, "restore --from SNAPSHOT [--db FILE]")
	from := fs.String("from", "", "the snapshot `file` to restore (required); its FILE.sha256 must match")
	dbPath := fs.String("db", "kpd.db", "the database `file` to replace (the server must be stopped)")
	noChecksum := fs.Bool("no-checksum", false, "accept a snapshot without a .sha256 file (its invariants are still checked)")
	timeout := new(time.Duration)
	durationVar(fs, timeout, "timeout", time.Second, "how long to wait for the lock of --db (more than 0)")
	if err := parseArgs(fs, args, m.Getenv, "restore"); err != nil {
		return err
	}
	if *from == "" {
		return usageErrorf("restore: --from SNAPSHOT is required")
	}
	if err := positive("timeout", *timeout); err != nil {
		return err
	}
	if err := mustExist("--from", *from, "give --from the snapshot file to restore"); err != nil {
		return err
	}
	if err := dirMustExist("--db", *dbPath); err != nil {
		return err
	}
	sum := *from + backup.ChecksumSuffix
	_, statErr := os.Stat(sum)
	hasSum := !errors.Is(statErr, os.ErrNotExist)
	bar := m.newProgressBar("restore")
	err := backup.Restore(*from, *dbPath, &backup.Options{
		AllowMissingChecksum: *noChecksum,
		LockTimeout:          *timeout,
		Progress:             bar.update,
	})
	bar.finish()
	if errors.Is(err, backup.ErrNoChecksum) {
		return fmt.Errorf("%w; to restore a snapshot you trust without one, add --no-checksum (its invariants are still checked)", err)
	}
	if err != nil {
		return err
	}
	verified := "checksum and invariants verified"
	if !hasSum {
		verified = "invariants verified; no checksum: " + sum + " does not exist"
	}
	fmt.Fprintf(m.Stderr, "restored %s from %s (%s)\n", *dbPath, *from, verified)
	return nil
}

// compact runs `kpd compact`: rewrite a database without its free pages,
// in place or into -o OUT, refusing while a server has it open.
func (m *Main) compact(_ context.Context, args []string) error {
	fs := newFlagSet("compact", m.Stderr, "compact [--db FILE] [-o OUT]")
	dbPath := fs.String("db", "kpd.db", "the database `file` to compact (the server must be stopped)")
	out := fs.String("o", "", "write the compacted copy to this new `file` instead of replacing --db")
	timeout := new(time.Duration)
	durationVar(fs, timeout, "timeout", time.Second, "how long to wait for the lock of --db (more than 0)")
	if err := parseArgs(fs, args, m.Getenv, "compact"); err != nil {
		return err
	}
	if err := positive("timeout", *timeout); err != nil {
		return err
	}
	if err := mustExist("--db", *dbPath, "give --db the database file to compact"); err != nil {
		return err
	}
	if *out != "" {
		if err := dirMustExist("-o", *out); err != nil {
			return err
		}
	}
	res, err := backup.Compact(*dbPath, *out, &backup.Options{LockTimeout: *timeout})
	if err != nil {
		return err
	}
	target := *out
	if target == "" {
		target = *dbPath
	}
	fmt.Fprintf(m.Stderr, "compacted %s into %s: %s -> %s\n", *dbPath, target, formatBytes(res.Before), formatBytes(res.After))
	return nil
}

// progressBar draws the progress of a long command on a terminal. A nil
// *progressBar (the output is not a terminal: a script) draws nothing.
type progressBar struct {
	w     io.Writer
	label string
	done  int64
	total int64 // -1 when unknown
	drawn time.Time
}

// progressInterval is the least time between two redraws.
const progressInterval = 100 * time.Millisecond

// newProgressBar returns a progress bar on stderr when it is a terminal,
// nil otherwise.
func (m *Main) newProgressBar(label string) *progressBar {
	f, ok := m.Stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &progressBar{w: f, label: label, total: -1}
}

// update records progress and redraws, at most every progressInterval.
func (p *progressBar) update(done, total int64) {
	if p == nil {
		return
	}
	p.done, p.total = done, total
	if now := time.Now(); now.Sub(p.drawn) >= progressInterval {
		p.drawn = now
		p.draw()
	}
}

// counter returns a writer that counts the bytes written to it as
// progress towards total.
func (p *progressBar) counter(total int64) io.Writer {
	if p == nil {
		return io.Discard
	}
	return progressCounter{p: p, total: total}
}

// finish draws the final state and ends the line.
func (p *progressBar) finish() {
	if p == nil || p.drawn.IsZero() {
		return
	}
	p.draw()
	fmt.Fprintln(p.w)
}

// progressBarWidth is the number of cells of the bar.
const progressBarWidth = 30

func (p *progressBar) draw() {
	if p.total <= 0 {
		fmt.Fprintf(p.w, "\r%s %s", p.label, formatBytes(p.done))
		return
	}
	frac := min(float64(p.done)/float64(p.total), 1)
	cells := int(frac * progressBarWidth)
	fmt.Fprintf(p.w, "\r%s [%s%s] %3.0f%% %s / %s", p.label,
		strings.Repeat("#", cells), strings.Repeat(".", progressBarWidth-cells),
		frac*100, formatBytes(p.done), formatBytes(p.total))
}

// progressCounter feeds the bytes written to it to a progress bar.
type progressCounter struct {
	p     *progressBar
	total int64
}

func (c progressCounter) Write(b []byte) (int, error) {
	c.p.update(c.p.done+int64(len(b)), c.total)
	return len(b), nil
}

// formatBytes renders a size in binary units: 512 B, 1.5 KiB, 3.2 MiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
