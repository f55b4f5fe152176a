package kv

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	bolt "go.etcd.io/bbolt"
)

// WriteSnapshot writes a consistent snapshot of the live database to w and
// returns the bytes written: a complete bbolt file as of one read
// transaction (bbolt Tx.WriteTo), holding every write committed before it
// began and none committed after. Open and VerifyFile take it as it is. The
// snapshot of a database not in use has the length Size reports.
//
// Writers go on while it runs, except that one needing to grow bbolt's
// memory map waits for it to end: w should be fast (a local file), not a
// network peer.
func (db *DB) WriteSnapshot(w io.Writer) (int64, error) {
	var n int64
	err := db.bolt.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// compactTxMaxSize is how many bytes of keys and values CompactTo copies
// per write transaction: bounded memory for databases of any size.
const compactTxMaxSize = 1 << 20

// CompactTo writes a compacted copy of the database (bbolt.Compact: every
// bucket, key, value and bucket sequence, pages filled completely) as of
// one read transaction into the file at dst, which must be empty or not
// exist. The copy is fsynced before CompactTo returns.
func (db *DB) CompactTo(dst string) error {
	if fi, err := os.Stat(dst); err == nil && fi.Size() > 0 {
		return fmt.Errorf("compact into %s: the file is not empty", dst)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("compact into %s: %w", dst, err)
	}
	// The copy is synced once at the end, not after each of its commits:
	// until CompactTo returns it is not a database anyone relies on.
	out, err := bolt.Open(dst, 0o600, &bolt.Options{
		Timeout:      db.opts.OpenTimeout,
		NoSync:       true,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return fmt.Errorf("compact into %s: %w", dst, err)
	}
	err = bolt.Compact(out, db.bolt, compactTxMaxSize)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("compact into %s: %w", dst, err)
	}
	return nil
}
