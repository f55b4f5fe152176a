package webhook_test

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/webhook"
)

var _ webhook.Source = (*kv.DB)(nil)

func openOutbox(t *testing.T, path string) *kv.DB {
	t.Helper()
	db, err := kv.Open(path, &kv.Options{Clock: func() time.Time { return eventsAt }, NoSync: true, Outbox: true, LowWatermark: 1})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// publishAndDrain publishes two KeyPackages for a device and claims both:
// the pool falls to the watermark (key_packages.low) and then to zero
// (key_packages.exhausted).
func publishAndDrain(t *testing.T, db *kv.DB, did, device string) {
	t.Helper()
	ctx := context.Background()
	kps := make([]kpd.KeyPackage, 2)
	for i := range kps {
		ref := make([]byte, 32)
		rand.Read(ref)
		kps[i] = kpd.KeyPackage{Ref: kpd.RefOf(ref), CipherSuite: 1, Data: []byte("kp"),
			NotBefore: eventsAt.Add(-time.Hour), NotAfter: eventsAt.Add(time.Hour)}
	}
	if _, _, err := db.Publish(ctx, did, device, kps); err != nil {
		t.Fatal(err)
	}
	for range kps {
		if _, err := db.Claim(ctx, kpd.ClaimRequest{Claimer: "did:plc:claimer", CipherSuite: 1,
			Targets: []kpd.ClaimTarget{{DID: did, Devices: []string{device}}}}); err != nil {
			t.Fatal(err)
		}
	}
}

// The dispatcher empties kv's outbox; events that could not be delivered
// survive a restart of the store and are delivered, in order, afterwards.
func TestDispatcherWithStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kpd.db")
	db := openOutbox(t, path)
	publishAndDrain(t, db, "did:plc:alice", "phone")

	// The receiver is down: nothing is delivered, nothing is lost.
	var mu sync.Mutex
	down := true
	rc, url := newReceiver(t, func(kpd.Event, int) bool {
		mu.Lock()
		defer mu.Unlock()
		return down
	})
	stop := run(t, newDispatcher(db, url, &outcomes{}))
	<-rc.got
	stop()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openOutbox(t, path)
	t.Cleanup(func() { db.Close() })
	pending, err := db.PendingEvents(context.Background(), 0, 10)
	if err != nil || len(pending) != 2 {
		t.Fatalf("after a restart the outbox holds %d events (%v), want 2", len(pending), err)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	d := newDispatcher(db, url, &outcomes{})
	run(t, d)
	publishAndDrain(t, db, "did:plc:bob", "laptop")
	d.Notify()

	testkit.Eventually(t, "the outbox to empty", func() bool {
		evs, err := db.PendingEvents(context.Background(), 0, 10)
		return err == nil && len(evs) == 0
	})
	got, _ := rc.snapshot()
	var types []string
	for _, ev := range got {
		types = append(types, ev.DID+" "+ev.Type)
	}
	want := []string{
		"did:plc:alice " + kpd.EventKeyPackagesLow, "did:plc:alice " + kpd.EventKeyPackagesExhausted,
		"did:plc:bob " + kpd.EventKeyPackagesLow, "did:plc:bob " + kpd.EventKeyPackagesExhausted,
	}
	if !slices.Equal(types, want) {
		t.Fatalf("delivered %v, want %v", types, want)
	}
	if ids := []string{got[0].ID, pending[0].ID}; ids[0] != ids[1] {
		t.Fatalf("event id %s delivered as %s: ids must be stable", ids[1], ids[0])
	}
}
