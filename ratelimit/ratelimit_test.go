package ratelimit

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
)

// newClock returns the tests' clock, at 2026-11-27 12:00 UTC.
func newClock() *testkit.Clock {
	return testkit.NewClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))
}

func wantAllow(t *testing.T, l *Limiter, key string, cost int) {
	t.Helper()
	if ok, wait := l.Allow(key, cost); !ok {
		t.Fatalf("%s: Allow(%q, %d) denied, retry after %v", l.Name(), key, cost, wait)
	}
}

func wantDeny(t *testing.T, l *Limiter, key string, cost int, retryAfter time.Duration) {
	t.Helper()
	if ok, wait := l.Allow(key, cost); ok || wait != retryAfter {
		t.Fatalf("%s: Allow(%q, %d) = %v, %v; want denied, retry after %v", l.Name(), key, cost, ok, wait, retryAfter)
	}
}

func TestPairLimitStopsDrainingOnly(t *testing.T) {
	c := newClock()
	pairs := New("claims_per_pair", PerMinute(10, 20), WithClock(c.Now))
	drained := "did:plc:mallory did:plc:alice"
	n := 0
	for {
		ok, wait := pairs.Allow(drained, 1)
		if !ok {
			if wait != 6*time.Second {
				t.Fatalf("retry after %v, want 6s", wait)
			}
			break
		}
		n++
		if n > 1000 {
			t.Fatal("the draining loop was never stopped")
		}
	}
	if n != 20 {
		t.Fatalf("draining loop got %d claims, want the burst of 20", n)
	}
	// Other pairs, of the same claimer and of the same target, go on.
	for range 20 {
		wantAllow(t, pairs, "did:plc:mallory did:plc:bob", 1)
		wantAllow(t, pairs, "did:plc:carol did:plc:alice", 1)
	}
	// Retry-After is exact: a second early it is still denied.
	c.Advance(5 * time.Second)
	wantDeny(t, pairs, drained, 1, time.Second)
	c.Advance(time.Second)
	wantAllow(t, pairs, drained, 1)
	wantDeny(t, pairs, drained, 1, 6*time.Second)
	// Two tokens take two intervals.
	wantDeny(t, pairs, drained, 2, 12*time.Second)
	if d := pairs.Denied(); d != 4 {
		t.Fatalf("Denied = %d, want 4", d)
	}
}

func TestPublishPerHour(t *testing.T) {
	c := newClock()
	l := New("publish", PerHour(1000), WithClock(c.Now))
	for range 10 {
		wantAllow(t, l, "did:plc:alice", 100)
	}
	// 100 KeyPackages need 100 * 3.6 s.
	wantDeny(t, l, "did:plc:alice", 100, 360*time.Second)
	wantDeny(t, l, "did:plc:alice", 1, 3600*time.Millisecond)
	c.Advance(359 * time.Second)
	wantDeny(t, l, "did:plc:alice", 100, time.Second)
	c.Advance(time.Second)
	wantAllow(t, l, "did:plc:alice", 100)
	wantAllow(t, l, "did:plc:bob", 1000)
}

func TestRefillIsCappedAtBurst(t *testing.T) {
	c := newClock()
	l := New("claims_per_claimer", PerSecond(10, 200), WithClock(c.Now))
	c.Advance(24 * time.Hour)
	wantAllow(t, l, "k", 150)
	c.Advance(24 * time.Hour)
	wantAllow(t, l, "k", 200)
	wantDeny(t, l, "k", 1, 100*time.Millisecond)
}

func TestCostAboveBurstNeverAllowed(t *testing.T) {
	c := newClock()
	l := New("claims_per_pair", PerMinute(10, 20), WithClock(c.Now))
	wantDeny(t, l, "k", 21, Never)
	c.Advance(time.Hour)
	wantDeny(t, l, "k", 21, Never)
	// It took nothing.
	wantAllow(t, l, "k", 20)
	// A cost below 1 is free.
	wantAllow(t, l, "k", 0)
	if l.Len() != 1 {
		t.Fatalf("Len = %d, want 1", l.Len())
	}
}

func TestMemoryBounded(t *testing.T) {
	c := newClock()
	const maxKeys = 10_000
	l := New("claims_per_pair", PerMinute(10, 20), WithClock(c.Now), WithMaxKeys(maxKeys))
	// A drained bucket: it will be full only in 2 minutes.
	const victim = "did:plc:mallory did:plc:alice"
	wantAllow(t, l, victim, 20)
	for i := range 1_000_000 {
		if ok, _ := l.Allow(strconv.Itoa(i), 1); !ok {
			t.Fatalf("key %d denied", i)
		}
		if i%100_000 == 0 {
			if n := l.Len(); n > maxKeys {
				t.Fatalf("after %d keys: Len = %d > %d", i+1, n, maxKeys)
			}
			c.Advance(time.Second)
		}
	}
	if n := l.Len(); n > maxKeys || n < maxKeys/2 {
		t.Fatalf("Len = %d, want at most %d and not almost empty", n, maxKeys)
	}
	// The drained bucket was not evicted by the flood of fresher ones:
	// draining cannot be reset by making many other keys.
	if ok, _ := l.Allow(victim, 5); ok {
		t.Fatal("the drained bucket was evicted")
	}
}

// A bucket's memory does not grow with its key: claim pairs name target
// DIDs of up to 2 KiB that need not exist, and one claimer may name ten
// new ones a second. 20,000 such keys would hold 40 MiB as strings.
func TestMemoryIndependentOfKeyLength(t *testing.T) {
	c := newClock()
	l := New("claims_per_pair", PerMinute(10, 20), WithClock(c.Now))
	pad := strings.Repeat("x", 2000)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 20_000 {
		wantAllow(t, l, "did:plc:mallory did:plc:"+pad+strconv.Itoa(i), 1)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := l.Len(); n != 20_000 {
		t.Fatalf("Len = %d, want 20000", n)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 8<<20 {
		t.Errorf("20,000 keys of 2 KiB hold %d MiB", grew>>20)
	}
	runtime.KeepAlive(l)
}

func TestIdleKeysDroppedFirst(t *testing.T) {
	c := newClock()
	l := New("pairs", PerMinute(10, 20), WithClock(c.Now), WithMaxKeys(10))
	for i := range 9 {
		wantAllow(t, l, "idle"+strconv.Itoa(i), 1)
	}
	wantAllow(t, l, "busy", 20)
	c.Advance(7 * time.Second) // the idle buckets are full again
	wantAllow(t, l, "new", 1)
	if n := l.Len(); n != 2 {
		t.Fatalf("Len = %d, want 2 (busy and new)", n)
	}
	// busy kept its state: one token refilled in 7 s, the next is 5 s away.
	wantAllow(t, l, "busy", 1)
	wantDeny(t, l, "busy", 1, 5*time.Second)
}

func TestAllowAllTakesFromNoneOnDenial(t *testing.T) {
	c := newClock()
	pairs := New("claims_per_pair", PerMinute(10, 20), WithClock(c.Now))
	claimers := New("claims_per_claimer", PerSecond(10, 200), WithClock(c.Now))
	claim := func(target string) (bool, time.Duration, string) {
		return AllowAll(
			Request{Limiter: claimers, Key: "mallory", Cost: 1},
			Request{Limiter: pairs, Key: "mallory " + target, Cost: 1},
		)
	}
	for range 20 {
		if ok, _, _ := claim("alice"); !ok {
			t.Fatal("claim denied within the burst")
		}
	}
	ok, wait, limit := claim("alice")
	if ok || wait != 6*time.Second || limit != "claims_per_pair" {
		t.Fatalf("AllowAll = %v, %v, %q; want denied by claims_per_pair for 6s", ok, wait, limit)
	}
	// The claimer's bucket was refunded: 180 tokens are left, not 179.
	wantAllow(t, claimers, "mallory", 180)
	wantDeny(t, claimers, "mallory", 1, 100*time.Millisecond)

	// The longest wait wins; Never beats any wait.
	ok, wait, limit = AllowAll(
		Request{Limiter: claimers, Key: "mallory", Cost: 1},
		Request{Limiter: pairs, Key: "mallory alice", Cost: 3},
	)
	if ok || wait != 18*time.Second || limit != "claims_per_pair" {
		t.Fatalf("AllowAll = %v, %v, %q; want claims_per_pair for 18s", ok, wait, limit)
	}
	ok, wait, limit = AllowAll(
		Request{Limiter: pairs, Key: "mallory alice", Cost: 1},
		Request{Limiter: claimers, Key: "mallory", Cost: 201},
	)
	if ok || wait != Never || limit != "claims_per_claimer" {
		t.Fatalf("AllowAll = %v, %v, %q; want Never by claims_per_claimer", ok, wait, limit)
	}
	if ok, _, limit := AllowAll(Request{Limiter: pairs, Key: "carol bob", Cost: 1}); !ok || limit != "" {
		t.Fatalf("AllowAll of a fresh key = %v, %q", ok, limit)
	}
}

func TestConcurrentAllowIsExact(t *testing.T) {
	c := newClock()
	l := New("claims_per_claimer", PerSecond(10, 200), WithClock(c.Now), WithMaxKeys(1000))
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 100 {
				if ok, _ := l.Allow("shared", 1); ok {
					allowed.Add(1)
				}
				l.Allow("own"+strconv.Itoa(g*100+i), 1)
				if i%10 == 0 {
					AllowAll(Request{Limiter: l, Key: "shared", Cost: 1}, Request{Limiter: l, Key: "own", Cost: 1})
				}
			}
		})
	}
	wg.Wait()
	// AllowAll may have taken some of "shared"; Allow and AllowAll together
	// never exceed the burst.
	if n := allowed.Load(); n > 200 || n < 200-16*10 {
		t.Fatalf("%d allowed from one bucket of 200", n)
	}
	if ok, _ := l.Allow("shared", 1); ok {
		t.Fatal("the shared bucket is not empty")
	}
	if n := l.Len(); n > 1000 {
		t.Fatalf("Len = %d > 1000", n)
	}
}

func TestLimit(t *testing.T) {
	for _, tt := range []struct {
		l    Limit
		want string
	}{
		{PerHour(1000), "1000/h burst 1000"},
		{PerMinute(10, 20), "10/min burst 20"},
		{PerSecond(10, 200), "10/s burst 200"},
		{Limit{Rate: 0.001, Burst: 1}, "0.001/s burst 1"},
	} {
		if err := tt.l.Validate(); err != nil {
			t.Errorf("%v: %v", tt.l, err)
		}
		if s := tt.l.String(); s != tt.want {
			t.Errorf("String = %q, want %q", s, tt.want)
		}
	}
	for _, bad := range []Limit{{}, {Rate: 1}, {Burst: 1}, {Rate: -1, Burst: 1}, {Rate: 1e-12, Burst: 1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v is valid", bad)
		}
	}
	defer func() {
		if recover() == nil {
			t.Fatal("New with an invalid limit did not panic")
		}
	}()
	New("bad", Limit{})
}

func BenchmarkAllow(b *testing.B) {
	b.Run("distinct keys", func(b *testing.B) {
		l := New("bench", PerSecond(10, 200))
		keys := make([]string, 1<<16)
		for i := range keys {
			keys[i] = "did:plc:" + strconv.Itoa(i)
		}
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				l.Allow(keys[i&(len(keys)-1)], 1)
				i += 7
			}
		})
	})
	b.Run("one key", func(b *testing.B) {
		l := New("bench", PerSecond(1e9, 1<<30))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Allow("did:plc:alice", 1)
			}
		})
	})
	b.Run("AllowAll pair and claimer", func(b *testing.B) {
		pairs := New("pairs", PerMinute(10, 20))
		claimers := New("claimers", PerSecond(10, 200))
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			c := "did:plc:" + strconv.Itoa(i&1023)
			AllowAll(Request{Limiter: claimers, Key: c, Cost: 1}, Request{Limiter: pairs, Key: c + " did:plc:alice", Cost: 1})
		}
	})
}
