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

// BenchmarkClaim claims one KeyPackage per operation and reports the pages
// bbolt wrote per claim, in the two shapes of BenchmarkBareBoltClaim:
//
//   - devices=16: 16 devices of one DID, each with a pool larger than the
//     claims it will see;
//   - pools=200: 200 KeyPackages of about 300 bytes (the size `kpd bench`
//     makes) on each of at least 320 devices, four per DID.
func BenchmarkClaim(b *testing.B) {
	b.Run("devices=16", func(b *testing.B) {
		benchClaim(b, benchDevices, b.N/benchDevices+1, 120, func(i int64) (string, string) {
			return bob, benchDevice(i)
		})
	})
	b.Run("pools=200", func(b *testing.B) {
		const pool = 200
		devices := max(320, b.N/pool+1)
		benchClaim(b, devices, pool, 300, func(i int64) (string, string) {
			i %= int64(devices)
			return fmt.Sprintf("did:plc:bench%05d", i/4), fmt.Sprintf("d%d", i%4)
		})
	})
}

// benchClaim publishes perDevice KeyPackages of dataSize bytes to each of
// the devices named by owner(0..devices-1), then claims from them in turn.
func benchClaim(b *testing.B, devices, perDevice, dataSize int, owner func(int64) (did, device string)) {
	e := benchDB(b)
	for d := range int64(devices) {
		did, device := owner(d)
		for left := perDevice; left > 0; left -= 1000 {
			kps := make([]kpd.KeyPackage, min(left, 1000))
			for i := range kps {
				kps[i] = e.newKP(1)
				kps[i].Data = make([]byte, dataSize)
				rand.Read(kps[i].Data)
			}
			e.publish(b, did, device, kps...)
		}
	}
	var next atomic.Int64
	written := e.WriteStats().PagesWritten
	b.SetParallelism(benchParallelism())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			did, device := owner(next.Add(1))
			req := kpd.ClaimRequest{Claimer: alice, CipherSuite: 1,
				Targets: []kpd.ClaimTarget{{DID: did, Devices: []string{device}}}}
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

// BenchmarkBareBoltClaim is the floor under kpd's claims: bbolt alone, the
// same file settings and group commit, each operation seeking the first key
// under a device prefix and deleting it.
//
//   - devices=16: the smallest possible claim, 32-byte values under 16
//     device prefixes (the shape of BenchmarkClaim), so that a commit of many
//     claims dirties a handful of pages;
//   - pools=200: the shape of `kpd bench --scenario claim`, 200 values of a
//     stored KeyPackage record's size (450 bytes) under each of at least 320
//     device prefixes, so that claims of different devices dirty different
//     leaves, as kpd's do.
func BenchmarkBareBoltClaim(b *testing.B) {
	b.Run("devices=16", func(b *testing.B) {
		bareBoltClaim(b, benchDevices, b.N/benchDevices+1, 32)
	})
	b.Run("pools=200", func(b *testing.B) {
		const pool = 200
		bareBoltClaim(b, max(320, b.N/pool+1), pool, 450)
	})
}

func bareBoltClaim(b *testing.B, devices, perDevice, valueSize int) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "bare.db"), 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	commit := newCommitter(db, DefaultMaxBatchSize, 0, commitHooks{})
	defer commit.close()
	name := []byte("pool")
	device := func(i int64) string { return fmt.Sprintf("d%05d", i%int64(devices)) }
	if err := commit.do(func(tx *bolt.Tx) error { _, err := tx.CreateBucket(name); return err }); err != nil {
		b.Fatal(err)
	}
	for d := range int64(devices) {
		err = db.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket(name)
			bk.FillPercent = kpsFillPercent
			for i := range perDevice {
				value := make([]byte, valueSize)
				rand.Read(value)
				if err := bk.Put(index.KeyPackage(bob, device(d), 1, uint64(i)), value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	pagesWritten := func() int64 { st := db.Stats(); return st.TxStats.GetWrite() }
	written := pagesWritten()
	b.SetParallelism(benchParallelism())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			prefix := index.DeviceSuite(bob, device(next.Add(1)), 1)
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
	b.ReportMetric(float64(pagesWritten()-written)/float64(b.N), "pages/claim")
}
