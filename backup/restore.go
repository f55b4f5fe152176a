package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kpd-dir/kpd/kv"
)

// Errors of Verify and Restore; match them with errors.Is. Restore wraps
// kv.ErrInUse when a running server holds the database.
var (
	// ErrChecksum: the snapshot's content does not match its checksum
	// file, or the checksum file is not in sha256sum format.
	ErrChecksum = errors.New("snapshot does not match its checksum")
	// ErrNoChecksum: the snapshot has no checksum file and
	// Options.AllowMissingChecksum is not set.
	ErrNoChecksum = errors.New("snapshot has no checksum file")
	// ErrInvalid: the snapshot is not a kpd database of this schema, or it
	// breaks an invariant of the store (kv.VerifyFile).
	ErrInvalid = errors.New("snapshot is not a valid kpd database")
)

// DefaultLockTimeout is the default of Options.LockTimeout.
const DefaultLockTimeout = time.Second

// Options tune Verify, Restore and Compact. A nil *Options means the
// defaults.
type Options struct {
	// AllowMissingChecksum accepts a snapshot without a checksum file (its
	// invariants are still checked). A checksum file that exists must
	// always match.
	AllowMissingChecksum bool
	// LockTimeout is how long to wait for a database file's lock; after it
	// the error wraps kv.ErrInUse. 0 means DefaultLockTimeout.
	LockTimeout time.Duration
	// Progress, when set, is called as Restore copies the snapshot, with
	// the bytes copied so far and the snapshot's size.
	Progress func(done, total int64)
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.LockTimeout <= 0 {
		r.LockTimeout = DefaultLockTimeout
	}
	return r
}

// Verify checks the snapshot at path: its content must match its checksum
// file (ErrChecksum; a missing one is ErrNoChecksum unless
// AllowMissingChecksum), and, opened read-only, it must be a kpd database
// that passes every invariant of kv.VerifyFile (ErrInvalid).
func Verify(path string, opts *Options) error {
	o := opts.withDefaults()
	want, err := expectedChecksum(path, o)
	if err != nil {
		return err
	}
	if want != "" {
		got, err := copyHashed(io.Discard, path, nil)
		if err != nil {
			return err
		}
		if err := matchChecksum(path, got, want); err != nil {
			return err
		}
	}
	return checkInvariants(path, path, o.LockTimeout)
}

// Restore replaces the database at dbPath with the snapshot at from. It
// copies the snapshot to a temporary file beside dbPath, checks the copy as
// Verify does, and only then renames it over dbPath (fsyncing file and
// directory), so that what is installed is exactly what was verified and a
// failure leaves dbPath untouched. While it runs it holds dbPath's lock; if
// a running server holds it, Restore fails with an error wrapping
// kv.ErrInUse. A damaged database at dbPath can be replaced.
//
// A dbPath that is a symbolic link is followed: the file it names is
// replaced. When dbPath does not exist, Restore creates it empty first and
// holds its lock (a server starting meanwhile waits for it, then opens the
// restored file); the empty file gets the owner of its directory when run
// as root, and is removed again if the restore fails.
func Restore(from, dbPath string, opts *Options) (err error) {
	o := opts.withDefaults()
	dbPath = followLink(dbPath)
	want, err := expectedChecksum(from, o)
	if err != nil {
		return err
	}
	_, statErr := os.Stat(dbPath)
	created := errors.Is(statErr, fs.ErrNotExist)
	unlock, err := lockFile(dbPath, o.LockTimeout, true)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer unlock()
	removeStaleTemps(filepath.Dir(dbPath), filepath.Base(dbPath))
	if created {
		// Removed while still locked, so that no server opens it.
		defer func() {
			if err != nil {
				os.Remove(dbPath)
			}
		}()
		if err := ownLikeDir(dbPath); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	err = writeFileAtomic(dbPath, func(f *os.File) error {
		got, err := copyHashed(f, from, o.Progress)
		if err != nil {
			return err
		}
		if err := matchChecksum(from, got, want); err != nil {
			return err
		}
		return checkInvariants(f.Name(), from, o.LockTimeout)
	})
	if err != nil {
		return fmt.Errorf("restore %s from %s: %w", dbPath, from, err)
	}
	return nil
}

// expectedChecksum returns the digest recorded beside the snapshot at path,
// or "" when there is none and o allows that.
func expectedChecksum(path string, o Options) (string, error) {
	sum, err := readChecksum(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && o.AllowMissingChecksum:
		return "", nil
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("%w: %s is missing", ErrNoChecksum, path+ChecksumSuffix)
	}
	return sum, err
}

// matchChecksum compares the digest of the snapshot at path with the one
// its checksum file records (none when want is "").
func matchChecksum(path, got, want string) error {
	if want != "" && got != want {
		return fmt.Errorf("%w: %s has SHA-256 %s, %s says %s", ErrChecksum, path, got, path+ChecksumSuffix, want)
	}
	return nil
}

// copyHashed copies the file at path to w and returns its hex SHA-256,
// reporting progress when it is not nil.
func copyHashed(w io.Writer, path string, progress func(done, total int64)) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	dst := io.MultiWriter(w, h)
	if progress != nil {
		dst = &progressWriter{w: dst, total: fi.Size(), progress: progress}
	}
	if _, err := io.Copy(dst, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// maxViolationsShown bounds the violations an ErrInvalid message lists.
const maxViolationsShown = 3

// checkInvariants opens the database file at path read-only and checks
// every invariant of the store; name is the file the caller knows it by.
// bbolt has no checksums on its data pages and may panic on a damaged one;
// that is reported as ErrInvalid too.
func checkInvariants(path, name string, timeout time.Duration) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s is damaged: %v", ErrInvalid, name, p)
		}
	}()
	violations, err := kv.VerifyFile(path, timeout)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, name, err)
	}
	if len(violations) == 0 {
		return nil
	}
	shown := make([]string, 0, maxViolationsShown)
	for _, v := range violations[:min(len(violations), maxViolationsShown)] {
		shown = append(shown, v.String())
	}
	return fmt.Errorf("%w: %s: %d invariant violation(s): %s", ErrInvalid, name, len(violations), strings.Join(shown, "; "))
}

// progressWriter reports the bytes written through it.
type progressWriter struct {
	w        io.Writer
	done     int64
	total    int64
	progress func(done, total int64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.done += int64(n)
	p.progress(p.done, p.total)
	return n, err
}
