package crashtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

const (
	defaultRounds = 20
	// Load runs for a random time in [minLoad, maxLoad) before each kill.
	minLoad = 200 * time.Millisecond
	maxLoad = 1200 * time.Millisecond
	// requestTimeout bounds each request of the load, so that the load
	// stops soon after the server dies.
	requestTimeout = 3 * time.Second
	// maxAvailable is the pool size at which publishers leave a device
	// alone (the server's quota is 200).
	maxAvailable = 60
)

// rounds is the number of kills: KPD_CRASH_ROUNDS, or defaultRounds.
func rounds(t *testing.T) int {
	v := os.Getenv("KPD_CRASH_ROUNDS")
	if v == "" {
		return defaultRounds
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("KPD_CRASH_ROUNDS=%q: want a positive number", v)
	}
	return n
}

// buildKPD builds the kpd binary from the module root into a temporary
// directory.
func buildKPD(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "kpd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/kpd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/kpd: %v\n%s", err, out)
	}
	return bin
}

// environ is the test's environment without KPD_* variables, so that the
// server runs on its flags alone.
func environ() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "KPD_") })
}

var listeningRE = regexp.MustCompile(`kpd listening on (http://[0-9.:]+)`)

// server is one kpd serve process.
type server struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
	mu   sync.Mutex
	tail []string
}

// startServer runs `kpd serve` on db with dev authentication and waits for
// the address in its start-up line. Rate limits are off: the test claims
// from few DIDs far faster than the default per-pair limit allows.
func startServer(t *testing.T, bin, db string) *server {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--db", db, "--listen", "127.0.0.1:0", "--auth", "dev",
		"--publish-limit", "off", "--claim-pair-limit", "off", "--claim-limit", "off")
	cmd.Env = environ()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, done: make(chan struct{})}
	t.Cleanup(s.kill)
	addr := make(chan string, 1)
	go s.readLog(stderr, addr)
	select {
	case s.url = <-addr:
		return s
	case <-s.done:
		t.Fatalf("kpd serve exited before listening:\n%s", s.log())
	case <-time.After(15 * time.Second):
		t.Fatalf("kpd serve did not report its address:\n%s", s.log())
	}
	return nil
}

// readLog reads the server's log until it closes, sends the listening
// address on addr, and keeps the last lines for failure messages.
func (s *server) readLog(r io.Reader, addr chan<- string) {
	defer close(s.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := listeningRE.FindStringSubmatch(line); m != nil {
			addr <- m[1]
		}
		s.mu.Lock()
		s.tail = append(s.tail, line)
		if len(s.tail) > 20 {
			s.tail = s.tail[1:]
		}
		s.mu.Unlock()
	}
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.tail, "\n")
}

// kill sends SIGKILL and reaps the process; it is a no-op once done.
func (s *server) kill() {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	_ = s.cmd.Wait()
}

// verify runs `kpd verify` on the (closed) database.
func verify(t *testing.T, bin, db string) {
	t.Helper()
	cmd := exec.Command(bin, "verify", "--db", db)
	cmd.Env = environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kpd verify after a kill: %v\n%s", err, out)
	}
}

// dev is one device under load.
type dev struct {
	did, name string
}

func (d dev) String() string { return d.did + "/" + d.name }

type posted struct {
	dev    dev
	ref    kpd.Ref
	sender string
}

// ledger is what 2xx responses promised, across restarts.
type ledger struct {
	mu sync.Mutex
	// published: every ref a publish answered 2xx for, by device.
	published map[kpd.Ref]dev
	// claimedBy: every regular ref a claim handed out, with its claimer.
	claimedBy map[kpd.Ref]string
	// handedTwice: refs handed out by more than one claim.
	handedTwice []string
	posted      map[string]posted
	acked       map[string]bool
	// unchecked: Welcome ids posted or acked since the last check.
	unchecked map[string]bool
}

func newLedger() *ledger {
	return &ledger{
		published: map[kpd.Ref]dev{},
		claimedBy: map[kpd.Ref]string{},
		posted:    map[string]posted{},
		acked:     map[string]bool{},
		unchecked: map[string]bool{},
	}
}

// load is one round's traffic against one server.
type load struct {
	t       *testing.T
	suite   mls.Suite
	url     string
	devices []dev
	ledger  *ledger
	// available is each device's last reported pool size.
	mu        sync.Mutex
	available map[dev]int
}

func (l *load) client(did string) *client.Client { return client.New(l.url, did) }

// call runs f with a bounded context; it reports whether the server
// answered 2xx.
func call[T any](ctx context.Context, f func(ctx context.Context) (T, error)) (T, bool) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	v, err := f(ctx)
	return v, err == nil
}

func (l *load) publisher(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		d := l.devices[rng.IntN(len(l.devices))]
		l.mu.Lock()
		full := l.available[d] >= maxAvailable
		l.mu.Unlock()
		if full {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		var data [][]byte
		for range 8 {
			bare, _, err := mlstest.KeyPackage(l.suite, mlstest.Options{Identity: d.did})
			if err != nil {
				l.t.Error(err)
				return
			}
			data = append(data, bare)
		}
		res, ok := call(ctx, func(ctx context.Context) (*client.PublishResponse, error) {
			return l.client(d.did).Publish(ctx, d.name, data)
		})
		if !ok {
			continue
		}
		l.ledger.mu.Lock()
		for _, r := range res.Results {
			l.ledger.published[r.Ref] = d
		}
		l.ledger.mu.Unlock()
		l.mu.Lock()
		for _, s := range res.Inventory.Suites {
			l.available[d] = s.Available
		}
		l.mu.Unlock()
	}
}

func (l *load) claimer(ctx context.Context, rng *rand.Rand, did string) {
	for ctx.Err() == nil {
		d := l.devices[rng.IntN(len(l.devices))]
		res, ok := call(ctx, func(ctx context.Context) (*kpd.ClaimResult, error) {
			return l.client(did).Claim(ctx, client.ClaimRequest{
				CipherSuite: uint16(l.suite.ID),
				Targets:     []kpd.ClaimTarget{{DID: d.did, Devices: []string{d.name}}},
			})
		})
		if !ok || len(res.KeyPackages) == 0 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		ref := res.KeyPackages[0].Ref
		l.ledger.mu.Lock()
		if prev, dup := l.ledger.claimedBy[ref]; dup {
			l.ledger.handedTwice = append(l.ledger.handedTwice, fmt.Sprintf("%s to %s and %s", ref, prev, did))
		}
		l.ledger.claimedBy[ref] = did
		l.ledger.mu.Unlock()

		raw, _ := ref.Bytes()
		welcome, err := mlstest.Welcome(l.suite, raw)
		if err != nil {
			l.t.Error(err)
			return
		}
		pw, ok := call(ctx, func(ctx context.Context) (*kpd.PostWelcomeResult, error) {
			return l.client(did).PostWelcome(ctx, "crash", welcome)
		})
		if ok {
			l.ledger.mu.Lock()
			l.ledger.posted[pw.WelcomeID] = posted{dev: d, ref: ref, sender: did}
			l.ledger.unchecked[pw.WelcomeID] = true
			l.ledger.mu.Unlock()
		}
	}
}

func (l *load) acker(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		d := l.devices[rng.IntN(len(l.devices))]
		c := l.client(d.did)
		list, ok := call(ctx, func(ctx context.Context) ([]kpd.PendingWelcome, error) {
			return c.Welcomes(ctx, d.name, client.ListOptions{})
		})
		if !ok || len(list) == 0 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		for _, pw := range list {
			if _, ok := call(ctx, func(ctx context.Context) (*kpd.AckResult, error) {
				return c.Ack(ctx, d.name, pw.WelcomeID)
			}); ok {
				l.ledger.mu.Lock()
				l.ledger.acked[pw.WelcomeID] = true
				l.ledger.unchecked[pw.WelcomeID] = true
				l.ledger.mu.Unlock()
			}
		}
	}
}

// run drives publishers, claimers and ackers until ctx is done.
func (l *load) run(ctx context.Context, seed uint64) {
	var wg sync.WaitGroup
	worker := func(i int, f func(rng *rand.Rand)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(rand.New(rand.NewPCG(seed, uint64(i))))
		}()
	}
	for i := range 2 {
		worker(i, func(rng *rand.Rand) { l.publisher(ctx, rng) })
	}
	for i := range 6 {
		did := fmt.Sprintf("did:plc:crashclaimer%d", i)
		worker(10+i, func(rng *rand.Rand) { l.claimer(ctx, rng, did) })
	}
	for i := range 2 {
		worker(20+i, func(rng *rand.Rand) { l.acker(ctx, rng) })
	}
	wg.Wait()
}

// check verifies through the API of a restarted server what the ledger
// promised: published refs present, claimed ones never available again,
// posted Welcomes still there and acked ones still acked. With all, every
// Welcome is checked; otherwise those touched since the last check.
func (l *load) check(ctx context.Context, all bool) {
	t := l.t
	t.Helper()
	lg := l.ledger
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if len(lg.handedTwice) > 0 {
		t.Fatalf("KeyPackages handed out twice: %v", lg.handedTwice)
	}
	states := map[kpd.Ref]kpd.KeyPackageState{}
	for _, d := range l.devices {
		inv, err := l.client(d.did).Inventory(ctx, d.name, true)
		if err != nil {
			var ce *client.Error
			if errors.As(err, &ce) && ce.Code == kpd.CodeNotFound {
				continue // never published to, or nothing acknowledged yet
			}
			t.Fatalf("inventory of %s: %v", d, err)
		}
		for _, kp := range inv.KeyPackages {
			states[kp.Ref] = kp.State
		}
	}
	for ref, d := range lg.published {
		if _, ok := states[ref]; !ok {
			t.Errorf("KeyPackage %s published to %s (2xx) is gone", ref, d)
		}
	}
	for ref, claimer := range lg.claimedBy {
		if st := states[ref]; st != kpd.StateClaimed && st != kpd.StateConsumed {
			t.Errorf("KeyPackage %s claimed by %s (2xx) is %q after the restart", ref, claimer, st)
		}
	}
	for id, p := range lg.posted {
		if !all && !lg.unchecked[id] {
			continue
		}
		st, err := l.client(p.sender).WelcomeStatus(ctx, id)
		if err != nil {
			t.Errorf("Welcome %s posted (2xx) for %s: %v", id, p.dev, err)
			continue
		}
		if len(st.Recipients) != 1 || st.Recipients[0].Ref != p.ref {
			t.Errorf("Welcome %s: recipients %+v, want %s", id, st.Recipients, p.ref)
			continue
		}
		status := st.Recipients[0].Status
		switch {
		case lg.acked[id] && status != kpd.DeliveryAcked:
			t.Errorf("Welcome %s acked (2xx) is %q after the restart", id, status)
		case !lg.acked[id] && status != kpd.DeliveryPending && status != kpd.DeliveryAcked:
			t.Errorf("Welcome %s is %q", id, status)
		}
		if lg.acked[id] && states[p.ref] != kpd.StateConsumed {
			t.Errorf("KeyPackage %s of acked Welcome %s is %q, want consumed", p.ref, id, states[p.ref])
		}
	}
	for _, d := range l.devices {
		list, err := l.client(d.did).Welcomes(ctx, d.name, client.ListOptions{})
		if err != nil {
			continue // a device nobody published to has no Welcomes
		}
		for _, pw := range list {
			if lg.acked[pw.WelcomeID] {
				t.Errorf("Welcome %s acked (2xx) is pending again for %s", pw.WelcomeID, d)
			}
		}
	}
	clear(lg.unchecked)
}

func TestKillNineLosesNothing(t *testing.T) {
	n := rounds(t)
	bin := buildKPD(t)
	db := filepath.Join(t.TempDir(), "kpd.db")
	suite, _ := mls.NewRegistry().Lookup(1)
	l := &load{t: t, suite: suite, ledger: newLedger(), available: map[dev]int{}}
	for i := range 3 {
		for _, name := range []string{"phone", "laptop"} {
			l.devices = append(l.devices, dev{did: fmt.Sprintf("did:plc:crashuser%d", i), name: name})
		}
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	for round := range n {
		srv := startServer(t, bin, db)
		l.url = srv.url
		l.check(ctx, false)

		loadCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { l.run(loadCtx, uint64(round)); close(done) }()
		time.Sleep(minLoad + time.Duration(rng.Int64N(int64(maxLoad-minLoad))))
		srv.kill()
		stop()
		<-done
		verify(t, bin, db)
		if t.Failed() {
			t.Fatalf("round %d failed; server log tail:\n%s", round, srv.log())
		}
	}
	srv := startServer(t, bin, db)
	l.url = srv.url
	l.check(ctx, true)
	srv.kill()

	lg := l.ledger
	t.Logf("%d kills: %d KeyPackages published, %d claimed, %d Welcomes posted, %d acked",
		n, len(lg.published), len(lg.claimedBy), len(lg.posted), len(lg.acked))
	if len(lg.published) == 0 || len(lg.claimedBy) == 0 || len(lg.posted) == 0 || len(lg.acked) == 0 {
		t.Fatal("the load did not exercise every operation")
	}
}
