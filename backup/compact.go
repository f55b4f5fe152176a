package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kpd-dir/kpd/kv"
)

// CompactResult reports the file sizes before and after a compaction.
type CompactResult struct {
	Before, After int64
}

// Compact rewrites the database at dbPath into a new file without the free
// pages that bbolt never returns to the file system. With out empty (or
// naming dbPath itself) the compacted copy replaces dbPath atomically (a
// temporary file beside it, fsynced and renamed over it) while dbPath stays
// locked (a dbPath that is a symbolic link is followed); otherwise it is
// written to out, which must not exist yet. A
// database held by a running server is refused with an error wrapping
// kv.ErrInUse.
func Compact(dbPath, out string, opts *Options) (CompactResult, error) {
	o := opts.withDefaults()
	dbPath = followLink(dbPath) // in place, replace the file a link names, not the link
	before, err := os.Stat(dbPath)
	if err != nil {
		return CompactResult{}, fmt.Errorf("compact: %w", err)
	}
	inPlace := out == ""
	if !inPlace {
		fi, err := os.Stat(out)
		switch {
		case err == nil && os.SameFile(before, fi):
			inPlace = true
		case err == nil:
			return CompactResult{}, fmt.Errorf("compact: %s already exists", out)
		case !errors.Is(err, fs.ErrNotExist):
			return CompactResult{}, fmt.Errorf("compact: %w", err)
		}
	}
	if inPlace {
		out = dbPath
	}
	// Read-write (an exclusive lock, held until the rename is done) when
	// the file is replaced; a shared lock is enough to copy it elsewhere.
	db, err := kv.Open(dbPath, &kv.Options{OpenTimeout: o.LockTimeout, ReadOnly: !inPlace})
	if err != nil {
		return CompactResult{}, fmt.Errorf("compact: %w", err)
	}
	defer db.Close()
	if inPlace {
		removeStaleTemps(filepath.Dir(dbPath), filepath.Base(dbPath))
	}
	err = writeFileAtomic(out, func(f *os.File) error { return db.CompactTo(f.Name()) })
	if err != nil {
		return CompactResult{}, fmt.Errorf("compact %s into %s: %w", dbPath, out, err)
	}
	after, err := os.Stat(out)
	if err != nil {
		return CompactResult{}, fmt.Errorf("compact: %w", err)
	}
	return CompactResult{Before: before.Size(), After: after.Size()}, nil
}
