//go:build windows || plan9 || solaris || aix || android

package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kpd-dir/kpd/kv"
)

// lockFile takes the lock that a running kpd holds on its database by
// opening the file with bbolt, waiting up to timeout. The returned function
// releases the lock. A missing file needs no lock, unless create is set:
// then bbolt creates it.
func lockFile(path string, timeout time.Duration, create bool) (unlock func() error, err error) {
	if _, err := os.Stat(path); !create && errors.Is(err, fs.ErrNotExist) {
		return func() error { return nil }, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%s: %w (lock not obtained within %s)", path, kv.ErrInUse, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return db.Close, nil
}

// ownLikeDir does nothing here: file owners are Unix's.
func ownLikeDir(string) error { return nil }

// matchFile gives f the permissions of the file fi describes.
func matchFile(f *os.File, fi fs.FileInfo) error { return f.Chmod(fi.Mode().Perm()) }
