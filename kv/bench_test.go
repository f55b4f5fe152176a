package kv

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/index"
)

// The benchmarks write to a real file with fsync and the default group
// commit settings, from about 64 goroutines.
const (
	benchGoroutines = 64
	benchDevices    = 16
	benchPublish    = 50 // KeyPackages per publish
)

func benchParallelism() int {
	return max(1, benchGoroutines/runtime.GOMAXPROCS(0))
}

// benchDB opens a synced database with the default group commit and no
// effective per-device quota.
func benchDB(b *testing.B) *env {
	return openTestDB(b, func(o *Options) {
		o.NoSync = false
		o.MaxAvailablePerSuite = 1 << 30
	})
}

func benchDevice(i int64) string { return fmt.Sprintf("d%02d", i%benchDevices) }

// BenchmarkClaim claims one KeyPackage per operation from one of 16 devices
// of a DID, each with a pool larger than the claims it will see, and
// reports the pages bbolt wrote per claim.
func BenchmarkClaim(b *testing.B) {
	e := benchDB(b)
	perDevice := b.N/benchDevices + 1
	for d := range int64(benchDevices) {
		for left := perDevice; left > 0; left -= 1000 {
			e.publishN(b, bob, benchDevice(d), 1, min(left, 1000))
		}
	}
	var next atomic.Int64
	written := e.WriteStats().PagesWritten
	b.SetParallelism(benchParallelism())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := kpd.ClaimRequest{Claimer: alice, CipherSuite: 1,
				Targets: []kpd.ClaimTarget{{DID: bob, Devices: []string{benchDevice(next.Add(1))}}}}
			res, err := e.Claim(e.ctx, req)
			if err != nil || len(res.KeyPackages) != 1 || res.KeyPackages[0].LastResort {
				b.Errorf("claim: %+v, %v", res, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
	b.ReportMetric(float64(e.WriteStats().PagesWritten-written)/float64(b.N), "pages/claim")
}

// BenchmarkPublish publishes batches of 50 KeyPackages, each goroutine for
// its own DID.
func BenchmarkPublish(b *testing.B) {
	e := benchDB(b)
	var next atomic.Int64
	b.SetParallelism(benchParallelism())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		did := fmt.Sprintf("did:plc:bench%d", next.Add(1))
		kps := make([]kpd.KeyPackage, benchPublish)
		for pb.Next() {
			for i := range kps {
				kps[i] = e.newKP(1)
			}
			if _, _, err := e.Publish(e.ctx, did, "phone", kps); err != nil {
				b.Errorf("publish: %v", err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*benchPublish)/b.Elapsed().Seconds(), "keypackages/s")
}

// BenchmarkBareBoltClaim is the floor under BenchmarkClaim: bbolt alone,
// same file settings and group commit, each operation seeking the first
// key under a device prefix and deleting it.
func BenchmarkBareBoltClaim(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "bare.db"), 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	commit := newCommitter(db, DefaultMaxBatchSize, 0)
	defer commit.close()
	name := []byte("pool")
	perDevice := b.N/benchDevices + 1
	err = db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		ref := make([]byte, 32)
		for d := range int64(benchDevices) {
			for i := range perDevice {
				rand.Read(ref)
				if err := bk.Put(index.KeyPackage(bob, benchDevice(d), 1, uint64(i)), bytes.Clone(ref)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(benchParallelism())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			prefix := index.DeviceSuite(bob, benchDevice(next.Add(1)), 1)
			err := commit.do(func(tx *bolt.Tx) error {
				c := tx.Bucket(name).Cursor()
				if k, _ := c.Seek(prefix); !bytes.HasPrefix(k, prefix) {
					return fmt.Errorf("pool %x is empty", prefix)
				}
				return c.Delete()
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
}
