package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// mappedBytes returns the size of this process's memory maps of path,
// from /proc/self/maps.
func mappedBytes(t *testing.T, path string) uint64 {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for line := range strings.Lines(string(maps)) {
		fields := strings.Fields(line)
		if len(fields) < 6 || fields[len(fields)-1] != path {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("/proc/self/maps line %q", line)
		}
		total += end - start
	}
	return total
}

// --mmap-size reaches bbolt: the database file is mapped that large from
// the start, while without it the map fits the small new file.
func TestServeMmapSize(t *testing.T) {
	fx := loadFixture(t)
	for _, tc := range []struct {
		args []string
		want func(uint64) bool
		what string
	}{
		{[]string{"--mmap-size", "64MiB"}, func(n uint64) bool { return n == 64<<20 }, "64 MiB"},
		{nil, func(n uint64) bool { return n > 0 && n < 64<<20 }, "less than 64 MiB"},
	} {
		path := filepath.Join(t.TempDir(), "kpd.db")
		m, _, _ := newMain(nil, fx.now)
		startServe(t, m, append([]string{"--db", path, "--listen", "127.0.0.1:0", "--auth", "dev"}, tc.args...)...)
		if n := mappedBytes(t, path); !tc.want(n) {
			t.Errorf("serve %v maps %d bytes of the database, want %s", tc.args, n, tc.what)
		}
	}
}
