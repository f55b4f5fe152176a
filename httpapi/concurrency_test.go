package httpapi_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
)

// TestConcurrentClaims: 64 claimers race over HTTP for one device's N
// KeyPackages and its last resort. Every regular KeyPackage is handed out
// exactly once, N in all, and after them only the last resort.
func TestConcurrentClaims(t *testing.T) {
	const n, claimers = 200, 64
	s := start(t)
	ctx := context.Background()
	a := s.as(alice)
	published := make(map[kpd.Ref]bool, n)
	for batch := 0; batch < n; batch += 100 {
		kps := make([][]byte, 100)
		for i := range kps {
			var ref kpd.Ref
			kps[i], ref = s.keyPackage(1, alice+"#dev1", false)
			published[ref] = true
		}
		must(a.Publish(ctx, "dev1", kps))(t)
	}
	lr, lrRef := s.keyPackage(1, alice+"#dev1", true)
	must(a.Publish(ctx, "dev1", [][]byte{lr}))(t)

	var (
		mu     sync.Mutex
		served = make(map[kpd.Ref]int)
		wg     sync.WaitGroup
		errs   = make(chan error, claimers)
	)
	req := client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice, Devices: []string{"dev1"}}}}
	for i := range claimers {
		wg.Go(func() {
			c := s.as(fmt.Sprintf("did:plc:claimer%02d", i))
			for {
				res, err := c.Claim(ctx, req)
				if err != nil {
					errs <- err
					return
				}
				if len(res.KeyPackages) != 1 {
					errs <- fmt.Errorf("claim = %+v, want one KeyPackage", res)
					return
				}
				got := res.KeyPackages[0]
				if got.LastResort {
					if got.Ref != lrRef {
						errs <- fmt.Errorf("last resort %s, want %s", got.Ref, lrRef)
					}
					return
				}
				mu.Lock()
				served[got.Ref]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(served) != n {
		t.Errorf("%d distinct KeyPackages handed out, want %d", len(served), n)
	}
	for ref, times := range served {
		if times != 1 || !published[ref] {
			t.Errorf("%s handed out %d times (published: %v)", ref, times, published[ref])
		}
	}
	for range 3 {
		res := must(s.as(bob).Claim(ctx, req))(t)
		if len(res.KeyPackages) != 1 || res.KeyPackages[0].Ref != lrRef {
			t.Fatalf("claim after the pool ran dry = %+v, want the last resort", res)
		}
	}
	inv := must(a.Inventory(ctx, "dev1", false))(t)
	if su := inv.Suites[0]; su.Available != 0 || su.Claimed != n || su.LastResort == nil || su.LastResort.Served != claimers+3 {
		t.Errorf("inventory = %+v (last resort %+v), want 0 available, %d claimed, served %d", su, su.LastResort, n, claimers+3)
	}
}
