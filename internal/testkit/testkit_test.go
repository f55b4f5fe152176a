package testkit

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	c := NewClock(t0)
	if got := c.Now(); !got.Equal(t0) {
		t.Fatalf("Now = %v, want %v", got, t0)
	}
	if got := c.Advance(time.Minute); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("Advance returned %v, want %v", got, t0.Add(time.Minute))
	}
	if got := c.Now(); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("Now after Advance = %v", got)
	}
	c.Set(t0.Add(-time.Hour))
	if got := c.Now(); !got.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("Now after Set = %v", got)
	}

	// Concurrent advances all count.
	c.Set(t0)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			c.Advance(time.Second)
			c.Now()
		})
	}
	wg.Wait()
	if got := c.Now(); !got.Equal(t0.Add(50 * time.Second)) {
		t.Fatalf("after 50 concurrent advances: %v, want %v", got, t0.Add(50*time.Second))
	}
}

func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			fmt.Fprintf(&b, "{\"n\":%d}\n", i)
		})
	}
	wg.Wait()
	if got := strings.Count(b.String(), "\n"); got != 20 {
		t.Fatalf("%d lines written, want 20:\n%s", got, &b)
	}
	lines := b.JSONLines(t)
	seen := map[float64]bool{}
	for _, l := range lines {
		seen[l["n"].(float64)] = true
	}
	if len(lines) != 20 || len(seen) != 20 {
		t.Fatalf("JSONLines = %v, want 20 distinct objects", lines)
	}
	var empty SyncBuffer
	if empty.String() != "" || empty.JSONLines(t) != nil {
		t.Fatal("the zero SyncBuffer is not empty")
	}
}

func TestStart(t *testing.T) {
	started := make(chan struct{})
	var ended bool
	stop := Start(t, func(ctx context.Context) {
		close(started)
		<-ctx.Done()
		ended = true
	})
	<-started
	stop()
	if !ended {
		t.Fatal("stop returned before run did")
	}
	stop() // again, as the cleanup will
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

// TestFixtures checks that every suite of the file is found and decoded.
func TestFixtures(t *testing.T) {
	f := Fixtures(t)
	wantIDs := []uint16{1, 2, 3, 4, 5, 6, 7, 77, 83}
	if len(f.Suites) != len(wantIDs) {
		t.Fatalf("%d suites, want %d", len(f.Suites), len(wantIDs))
	}
	for i, id := range wantIDs {
		s := f.Suite(t, id)
		if s != &f.Suites[i] || s.Name == "" || s.Hash == "" || s.Signature == "" {
			t.Errorf("suite %d: %+v", id, s)
		}
		for _, name := range []string{"alice_dev1", "alice_dev2", "alice_last_resort", "alice_expired", "bob"} {
			k, ok := s.KeyPackages[name]
			if !ok {
				t.Errorf("suite %d: no %s", id, name)
				continue
			}
			// The MLSMessage framing is 4 bytes: version, wire_format.
			if len(k.Bare) == 0 || !bytes.Equal(k.Message[4:], k.Bare) {
				t.Errorf("suite %d %s: message does not frame the bare KeyPackage", id, name)
			}
			if ref, err := hex.DecodeString(k.RefHex); err != nil || len(ref) < 32 || string(k.Ref()) != k.RefHex {
				t.Errorf("suite %d %s: ref %q", id, name, k.RefHex)
			}
			if !strings.HasPrefix(k.Identity, "did:plc:") || !k.NotBefore.Before(k.NotAfter) ||
				k.Now().Before(k.NotBefore) || !k.Now().Before(k.NotAfter) {
				t.Errorf("suite %d %s: identity %q, lifetime [%v, %v]", id, name, k.Identity, k.NotBefore, k.NotAfter)
			}
			if k.LastResort != (name == "alice_last_resort") {
				t.Errorf("suite %d %s: last resort %v", id, name, k.LastResort)
			}
		}
		if dev1 := s.KeyPackages["alice_dev1"]; !strings.HasPrefix(dev1.Identity, AliceDID+"#") {
			t.Errorf("suite %d: alice_dev1 is %q", id, dev1.Identity)
		}
		if len(s.Invalid.BadSignature) == 0 || len(s.Invalid.Truncated) == 0 || len(s.Invalid.TrailingBytes) == 0 {
			t.Errorf("suite %d: invalid variants missing", id)
		}
		w := s.Welcome
		if len(w.Message) == 0 || len(w.NewMemberRefs) != 2 || len(w.ExpectRefsOf) != 2 {
			t.Errorf("suite %d: welcome %d bytes, refs %v of %v", id, len(w.Message), w.NewMemberRefs, w.ExpectRefsOf)
		}
		for j, name := range w.ExpectRefsOf {
			if j < len(w.NewMemberRefs) && w.NewMemberRefs[j] != s.KeyPackages[name].RefHex {
				t.Errorf("suite %d: welcome ref %d is not %s's", id, j, name)
			}
		}
	}
	if got := f.Suite(t, 83).Spec(); got != "83=sha512:ed25519" {
		t.Errorf("Spec = %q", got)
	}
	if got, want := f.Now(), f.Suites[0].KeyPackages["alice_dev1"].NotBefore.Add(time.Hour); !got.Equal(want) {
		t.Errorf("Now = %v, want %v", got, want)
	}

	// Each call has a copy of its own.
	f.Suites[0].KeyPackages["alice_dev1"].Message[0] ^= 0xff
	f.Suites[0].Invalid.Truncated[0] ^= 0xff
	g := Fixtures(t)
	if g.Suites[0].KeyPackages["alice_dev1"].Message[0] == f.Suites[0].KeyPackages["alice_dev1"].Message[0] ||
		g.Suites[0].Invalid.Truncated[0] == f.Suites[0].Invalid.Truncated[0] {
		t.Error("a change to one call's fixtures shows in the next call's")
	}
}

func TestDo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %q", r.Method, r.Header.Get("Authorization"))
	}))
	defer srv.Close()
	for auth, want := range map[string]string{"": `GET ""`, "Bearer x": `GET "Bearer x"`} {
		resp := Do(t, http.MethodGet, srv.URL, auth)
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || string(body) != want {
			t.Errorf("authorization %q: status %d, body %q (%v); want %q", auth, resp.StatusCode, body, err, want)
		}
	}
}
