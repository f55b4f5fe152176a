// Package backup takes, schedules, verifies and restores snapshots of kpd's
// database (SPEC section 8).
//
// A snapshot is a complete bbolt file as of one read transaction, written
// while the server keeps serving. Every file this package writes (a
// snapshot, its checksum, a restored or compacted database) is written to a
// temporary file in the destination directory, fsynced, renamed into place
// and made durable by an fsync of the directory: a crash leaves either the
// old file or the complete new one, never a torn one. Beside each snapshot
// lies `<snapshot>.sha256` in sha256sum format, so that `sha256sum -c` can
// check it too. Restore refuses a snapshot whose checksum or invariants
// (kv.VerifyFile) fail, and refuses to replace a database that a running
// server holds.
package backup

import (
	"bufio"
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
)

// Source is what a snapshot is taken of: *kv.DB implements it.
type Source interface {
	// WriteSnapshot writes a consistent snapshot of the database to w and
	// returns the number of bytes written.
	WriteSnapshot(w io.Writer) (int64, error)
}

// SourceFunc adapts a function to Source, for example Download to take a
// snapshot from a running server.
type SourceFunc func(w io.Writer) (int64, error)

// WriteSnapshot calls f(w).
func (f SourceFunc) WriteSnapshot(w io.Writer) (int64, error) { return f(w) }

// Info describes a snapshot written by Snapshot.
type Info struct {
	// Path is the snapshot file.
	Path string
	// Size is its length in bytes.
	Size int64
	// SHA256 is the lowercase hex SHA-256 of its content, as written to
	// Path + ChecksumSuffix.
	SHA256 string
}

// ChecksumSuffix is appended to a snapshot's path to name its checksum file.
const ChecksumSuffix = ".sha256"

// Snapshot file names are namePrefix + UTC time in nameLayout + nameSuffix:
// fixed width, so that they sort by time.
const (
	namePrefix = "kpd-"
	nameLayout = "20060102T150405.000Z"
	nameSuffix = ".db"
)

// Name returns the file name of a snapshot taken at t, such as
// kpd-20261127T031500.000Z.db. Names sort in time order.
func Name(t time.Time) string {
	return namePrefix + t.UTC().Format(nameLayout) + nameSuffix
}

// parseName returns the time of a snapshot file name made by Name.
func parseName(name string) (time.Time, bool) {
	s, ok := strings.CutPrefix(name, namePrefix)
	if !ok {
		return time.Time{}, false
	}
	if s, ok = strings.CutSuffix(s, nameSuffix); !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(nameLayout, s)
	return t, err == nil
}

// Snapshot writes a snapshot of src to dir/name and its checksum to
// dir/name.sha256, each through a temporary file that is fsynced and renamed
// into place. An existing file of that name is replaced (a symbolic link is
// followed), unless a running kpd has it open as its database: that is
// refused with an error wrapping kv.ErrInUse, and the file is held locked
// while the snapshot is written. The checksum file of a replaced snapshot
// is removed before the new snapshot takes its place, so that a crash
// between the two renames cannot pair a snapshot with another's checksum.
// On error nothing is left behind but, at worst, a complete snapshot (the
// new one or the one it was to replace) without its checksum file.
func Snapshot(src Source, dir, name string) (Info, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return Info{}, fmt.Errorf("snapshot: %q is not a file name", name)
	}
	path := followLink(filepath.Join(dir, name))
	unlock, err := lockFile(path, 0, false)
	if err != nil {
		return Info{}, fmt.Errorf("snapshot: refusing to replace %s: %w", path, err)
	}
	defer unlock()
	h := sha256.New()
	var size int64
	err = writeFileAtomicThen(path, func(f *os.File) error {
		n, err := src.WriteSnapshot(io.MultiWriter(f, h))
		size = n
		return err
	}, func() error {
		if err := os.Remove(path + ChecksumSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return syncDir(filepath.Dir(path))
	})
	if err != nil {
		return Info{}, fmt.Errorf("snapshot %s: %w", path, err)
	}
	info := Info{Path: path, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}
	if err := writeChecksum(info); err != nil {
		return Info{}, err
	}
	return info, nil
}

// writeChecksum writes info's checksum file in sha256sum format.
func writeChecksum(info Info) error {
	line := info.SHA256 + "  " + filepath.Base(info.Path) + "\n"
	err := writeFileAtomic(info.Path+ChecksumSuffix, func(f *os.File) error {
		_, err := io.WriteString(f, line)
		return err
	})
	if err != nil {
		return fmt.Errorf("snapshot checksum %s: %w", info.Path+ChecksumSuffix, err)
	}
	return nil
}

// maxChecksumFile bounds how much of a checksum file is read: a valid one
// is one line of a digest and a file name.
const maxChecksumFile = 4096

// readChecksum returns the hex SHA-256 recorded in the checksum file of the
// snapshot at path. The error wraps fs.ErrNotExist when there is none, and
// ErrChecksum when it is not in sha256sum format.
func readChecksum(path string) (string, error) {
	f, err := os.Open(path + ChecksumSuffix)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReader(io.LimitReader(f, maxChecksumFile)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	digest, _, _ := strings.Cut(line, " ")
	if b, err := hex.DecodeString(digest); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%w: %s is not in sha256sum format", ErrChecksum, path+ChecksumSuffix)
	}
	return strings.ToLower(digest), nil
}

// writeFileAtomic puts a new file at path: fill writes it as a temporary
// file in path's directory, which is then fsynced, renamed over path, and
// made durable by an fsync of the directory. When path exists, the new file
// gets its permissions (and, when run as root, its owner), so that a
// restored database stays readable by the service that owns it. On error
// the temporary file is removed and path is untouched.
func writeFileAtomic(path string, fill func(f *os.File) error) error {
	return writeFileAtomicThen(path, fill, nil)
}

// writeFileAtomicThen is writeFileAtomic that calls prepare, when set,
// after the new file is durable and before it is renamed over path; an
// error from prepare fails the write.
func writeFileAtomicThen(path string, fill func(f *os.File) error, prepare func() error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if fi, serr := os.Stat(path); serr == nil {
		if err := matchFile(f, fi); err != nil {
			return err
		}
	} else if !errors.Is(serr, fs.ErrNotExist) {
		return serr
	}
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if prepare != nil {
		if err := prepare(); err != nil {
			return err
		}
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// removeStaleTemps deletes the temporary files that writeFileAtomic left
// beside files matching pattern (a file name, or a filepath.Match pattern)
// in dir when a crash stopped it: each is as large as what it was to
// become. Call it only while nothing else can be writing such a file (the
// database's lock held, or the backup directory's one scheduler running).
// Failures are ignored: the files are only clutter.
func removeStaleTemps(dir, pattern string) {
	temps, _ := filepath.Glob(filepath.Join(dir, "."+pattern+".*.tmp"))
	for _, t := range temps {
		if fi, err := os.Lstat(t); err == nil && fi.Mode().IsRegular() {
			os.Remove(t)
		}
	}
}

// followLink returns the file that path names when it is a symbolic link
// (resolved fully), so that replacing it replaces that file rather than the
// link; otherwise, or when it cannot be resolved, path.
func followLink(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	return path
}

// syncDir fsyncs a directory, making a rename in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return d.Close()
}
