package kv

import (
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestWaitWelcome: a waiter is released by the commit of a Welcome for its
// device, before PostWelcome returns, and by nothing else.
func TestWaitWelcome(t *testing.T) {
	e := newTestDB(t)
	e.publishN(t, bob, "phone", 1, 3)
	e.publishN(t, bob, "tablet", 1, 3)
	phone, cancelPhone := e.WaitWelcome(bob, "phone")
	defer cancelPhone()
	tablet, cancelTablet := e.WaitWelcome(bob, "tablet")
	defer cancelTablet()
	carols, cancelCarol := e.WaitWelcome(carol, "phone")
	defer cancelCarol()
	cancelled, cancel := e.WaitWelcome(bob, "phone")
	cancel()
	cancel()

	// Writes that route no Welcome to the devices release nobody.
	ref := e.claimOne(t, alice, bob, "phone", 1).Ref
	e.post(t, alice, "c", 1, randRef())
	if closed(phone) || closed(tablet) {
		t.Fatal("a waiter was released without a Welcome")
	}

	w := e.welcome(alice, "c", 1, ref)
	if _, err := e.PostWelcome(e.ctx, w); err != nil {
		t.Fatal(err)
	}
	if !closed(phone) {
		t.Fatal("the phone's waiter was not released when PostWelcome returned")
	}
	if closed(tablet) || closed(carols) || closed(cancelled) {
		t.Fatal("waiters of other devices, or a cancelled one, were released")
	}
	// Registered after the commit: the next Welcome releases it, an
	// idempotent re-post does not.
	again, cancelAgain := e.WaitWelcome(bob, "phone")
	defer cancelAgain()
	if _, err := e.PostWelcome(e.ctx, w); err != nil {
		t.Fatal(err)
	}
	if closed(again) {
		t.Fatal("an idempotent re-post released a waiter")
	}
	e.post(t, alice, "c", 1, e.claimOne(t, alice, bob, "phone", 1).Ref)
	if !closed(again) {
		t.Fatal("the second Welcome did not release the new waiter")
	}
}

// TestWaitWelcomeLongPoll runs the documented pattern (wait, list, block)
// against concurrent posts: every Welcome is seen, none waits long.
func TestWaitWelcomeLongPoll(t *testing.T) {
	e := newTestDB(t, func(o *Options) { o.MaxAvailablePerSuite = 1000 })
	const welcomes = 40
	e.publishN(t, bob, "phone", 1, welcomes)
	seen := map[string]bool{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range welcomes {
			e.post(t, alice, "c", 1, e.claimOne(t, alice, bob, "phone", 1).Ref)
		}
	}()
	deadline := time.After(20 * time.Second)
	for len(seen) < welcomes {
		ch, cancel := e.WaitWelcome(bob, "phone")
		pw, err := e.PendingWelcomes(e.ctx, bob, "phone", kpd.ListWelcomesOptions{})
		if err != nil {
			t.Fatal(err)
		}
		fresh := 0
		for _, p := range pw {
			if !seen[p.WelcomeID] {
				seen[p.WelcomeID], fresh = true, fresh+1
			}
		}
		if fresh == 0 {
			select {
			case <-ch:
			case <-deadline:
				t.Fatalf("a Welcome was missed: saw %d of %d", len(seen), welcomes)
			}
		}
		cancel()
	}
	wg.Wait()
}

func TestWaitWelcomeClose(t *testing.T) {
	e := openTestDB(t)
	a, cancelA := e.WaitWelcome(bob, "phone")
	defer cancelA()
	b, _ := e.WaitWelcome(carol, "tablet")
	if err := e.DB.Close(); err != nil {
		t.Fatal(err)
	}
	if !closed(a) || !closed(b) {
		t.Fatal("Close did not release the waiters")
	}
	late, cancel := e.WaitWelcome(bob, "phone")
	cancel()
	if !closed(late) {
		t.Fatal("a waiter registered after Close blocks")
	}
}
