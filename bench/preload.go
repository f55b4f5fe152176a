package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/kpd-dir/kpd"
)

// syntheticSize is the size of a preloaded KeyPackage's bytes: about that
// of a suite 1 KeyPackage with a basic credential naming a did:plc.
const syntheticSize = 300

// preloadDevicesPerDID is how many devices each preloaded DID gets.
const preloadDevicesPerDID = 10

type preloadConfig struct {
	count int
	// perDev KeyPackages go to each device, in one store transaction.
	perDev   int
	suite    uint16
	runID    string
	now      time.Time
	progress io.Writer
}

// preload writes count synthetic KeyPackages (random refs and bytes, valid
// lifetimes) straight into the store, perDev per device and transaction,
// from several goroutines so that group commit can merge them. They are
// ordinary available KeyPackages of made-up DIDs that nothing claims; they
// make the database as large as a busy one. It returns how many it stored.
func preload(ctx context.Context, store kpd.Store, cfg preloadConfig) (int, error) {
	devices := (cfg.count + cfg.perDev - 1) / cfg.perDev
	var stored atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	if cfg.progress != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					fmt.Fprintf(cfg.progress, "\rpreload: %d of %d", stored.Load(), cfg.count)
				}
			}
		}()
	}
	err := parallel(ctx, devices, 4*runtime.GOMAXPROCS(0), func(i int) error {
		did := fmt.Sprintf("did:plc:preload%s%d", cfg.runID, i/preloadDevicesPerDID)
		dev := fmt.Sprintf("p%d", i%preloadDevicesPerDID)
		kps := make([]kpd.KeyPackage, min(cfg.perDev, cfg.count-i*cfg.perDev))
		for j := range kps {
			kps[j] = syntheticKeyPackage(did, dev, cfg.suite, cfg.now)
		}
		if _, _, err := store.Publish(ctx, did, dev, kps); err != nil {
			return err
		}
		stored.Add(int64(len(kps)))
		return nil
	})
	if cfg.progress != nil {
		fmt.Fprintln(cfg.progress)
	}
	return int(stored.Load()), err
}

func syntheticKeyPackage(did, device string, suite uint16, now time.Time) kpd.KeyPackage {
	buf := make([]byte, 32+syntheticSize)
	if _, err := rand.Read(buf); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return kpd.KeyPackage{
		Ref:         kpd.RefOf(buf[:32]),
		DID:         did,
		Device:      device,
		CipherSuite: suite,
		Data:        buf[32:],
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(30 * 24 * time.Hour),
	}
}
