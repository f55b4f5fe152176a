//go:build !windows && !plan9 && !solaris && !aix && !android

package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kpd-dir/kpd/kv"
)

// lockRetry is how often lockFile tries again while the lock is held.
const lockRetry = 50 * time.Millisecond

// lockFile takes the exclusive flock(2) lock that bbolt takes on a database
// file it opens read-write, waiting up to timeout; a running kpd holds it.
// It does not read the file, so it works on a damaged database too. The
// returned function releases the lock. A missing file needs no lock, unless
// create is set: then lockFile creates it empty (mode 0600) and locks it,
// so that a server starting meanwhile waits for the lock instead of
// creating a database of its own there.
func lockFile(path string, timeout time.Duration, create bool) (unlock func() error, err error) {
	flag := os.O_RDONLY
	if create {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		return func() error { return nil }, nil
	}
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f.Close, nil // closing the file releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s: %w (lock not obtained within %s)", path, kv.ErrInUse, timeout)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		time.Sleep(lockRetry)
	}
}

// ownLikeDir gives the file at path the owner and group of its directory,
// when running as root (a restore run by root for a service that runs as
// its own user); otherwise it does nothing.
func ownLikeDir(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return os.Chown(path, int(st.Uid), int(st.Gid))
}

// matchFile gives f the permissions of the file fi describes and, when
// running as root, its owner and group.
func matchFile(f *os.File, fi fs.FileInfo) error {
	if err := f.Chmod(fi.Mode().Perm()); err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 {
		return nil
	}
	return f.Chown(int(st.Uid), int(st.Gid))
}
