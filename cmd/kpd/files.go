package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kpd-dir/kpd/kv"
)

// mustExist fails unless the file at path, the value of flagName, exists;
// hint says what to do instead. Commands that read a database check it
// first: opening a missing database would create an empty one.
func mustExist(flagName, path, hint string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %s: %w; %s", flagName, path, fs.ErrNotExist, hint)
	}
	return nil
}

// dirMustExist fails unless the directory that is to hold the file at
// path, the value of flagName, exists. Without it, the error would name
// the temporary file that a command writes there first.
func dirMustExist(flagName, path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s %s: directory %s does not exist; create it first", flagName, path, dir)
	case err == nil && !fi.IsDir():
		return fmt.Errorf("%s %s: %s is not a directory", flagName, path, dir)
	}
	return nil
}

// openDB is kv.Open with an error that names the file once.
func openDB(path string, opts *kv.Options) (*kv.DB, error) {
	db, err := kv.Open(path, opts)
	return db, pathOnce(path, err)
}

// pathOnce returns err, of opening the database at path, without the
// repetition of "open PATH: open PATH: permission denied": kv wraps the
// file system's error, which names the path already, in one naming it
// again.
func pathOnce(path string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == path && errors.Unwrap(err) == error(pe) {
		return pe
	}
	return err
}
