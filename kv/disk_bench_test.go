//go:build linux

package kv

import (
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkDiskCommit measures what a commit's page writes cost the disk
// under the database, without bbolt: each operation writes a number of
// 4 KiB pages to a 64 MiB file (scattered: each at a random page; contiguous:
// one run at a random place), calls fdatasync, then writes and syncs one
// more page the way bbolt writes its meta page. Its µs/page
// is the price of a dirty page in a commit, and its p50-ms and p99-ms the
// spread of single commits' times (see docs/BENCHMARKS.md).
func BenchmarkDiskCommit(b *testing.B) {
	const fileSize = 64 << 20
	for _, layout := range []string{"scattered", "contiguous"} {
		for _, pages := range []int{1, 64, 200} {
			b.Run(fmt.Sprintf("%s/pages=%d", layout, pages), func(b *testing.B) {
				f, err := os.Create(filepath.Join(b.TempDir(), "disk"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				// Written, not truncated: overwrites of allocated blocks,
				// as in a database file.
				if _, err := f.Write(make([]byte, fileSize)); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				page := make([]byte, 4096)
				run := make([]byte, 4096*pages)
				offsets := make([]int64, pages)
				var took []time.Duration
				b.ResetTimer()
				for b.Loop() {
					start := time.Now()
					if layout == "contiguous" {
						if _, err := f.WriteAt(run, mrand.Int64N(fileSize/4096-int64(pages))*4096); err != nil {
							b.Fatal(err)
						}
					} else {
						for i := range offsets {
							offsets[i] = mrand.Int64N(fileSize/4096) * 4096
						}
						slices.Sort(offsets) // bbolt writes a commit's pages in page order
						for _, off := range offsets {
							if _, err := f.WriteAt(page, off); err != nil {
								b.Fatal(err)
							}
						}
					}
					if err := syscall.Fdatasync(int(f.Fd())); err != nil {
						b.Fatal(err)
					}
					if _, err := f.WriteAt(page, 0); err != nil {
						b.Fatal(err)
					}
					if err := syscall.Fdatasync(int(f.Fd())); err != nil {
						b.Fatal(err)
					}
					took = append(took, time.Since(start))
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*pages), "µs/page")
				slices.Sort(took)
				b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(took[(len(took)*99+99)/100-1].Microseconds())/1000, "p99-ms")
			})
		}
	}
}
