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
	"sync/atomic"
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
	// minPerRound is the fewest 2xx answers of each kind of operation that
	// every round must see before its kill, so that a load which stalls
	// (say, publishers that stop after the first rounds) fails the test
	// instead of killing an idle server. A round waits for them up to
	// stallTimeout, which only a stalled load (or a machine far slower
	// than CI's) exceeds.
	minPerRound  = 3
	stallTimeout = 10 * time.Second
	// welcomeCheckers is the number of goroutines that check Welcomes
	// after a restart.
	welcomeCheckers = 4
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

// seed is the seed of the kill timing and of the load's random choices:
// KPD_CRASH_SEED, or one from the clock. It is logged so that a failing run
// can be replayed (as far as the scheduling of goroutines and processes
// allows).
func seed(t *testing.T) uint64 {
	v := os.Getenv("KPD_CRASH_SEED")
	if v == "" {
		return uint64(time.Now().UnixNano())
	}
	s, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("KPD_CRASH_SEED=%q: want an unsigned decimal number", v)
	}
	return s
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
	dieWithTest(cmd)
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

// signal sends SIGKILL without waiting for the process to die; kill must
// still be called, from the goroutine that started the server or after one
// that synchronises with the signal's sender.
func (s *server) signal() { _ = s.cmd.Process.Signal(syscall.SIGKILL) }

// kill sends SIGKILL and reaps the process; it is a no-op once done.
func (s *server) kill() {
	if s.cmd.ProcessState != nil {
		return
	}
	s.signal()
	<-s.done
	_ = s.cmd.Wait()
}

// verify runs `kpd verify` (the store's invariant checker) on the closed
// database.
func verify(t *testing.T, bin, db string) {
	t.Helper()
	cmd := exec.Command(bin, "verify", "--db", db)
	cmd.Env = environ()
	dieWithTest(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kpd verify after a kill: %v\n%s", err, out)
	}
}

// dev is one device under load.
type dev struct {
	did, name string
	// target is the number of available regular KeyPackages publishers
	// keep the device at, at most.
	target int
	// lastResort devices get a last-resort KeyPackage before the first
	// kill. Their small target makes claims run them dry often, so that
	// claims are served the last resort too.
	lastResort bool
}

func (d dev) String() string { return d.did + "/" + d.name }

// op is a kind of operation of the load.
type op int

const (
	opPublish op = iota
	opClaim
	opPost
	opAck
	numOps
)

func (o op) String() string {
	return [...]string{"publish", "claim", "Welcome post", "ack"}[o]
}

type posted struct {
	dev    dev
	ref    kpd.Ref
	sender string
}

// ledger is what 2xx responses promised, across restarts.
type ledger struct {
	mu sync.Mutex
	// published: every regular ref a publish answered 2xx for, by device.
	published map[kpd.Ref]dev
	// claimedBy: every regular ref a claim handed out, with its claimer.
	claimedBy map[kpd.Ref]string
	// handedTwice: refs handed out by more than one claim.
	handedTwice []string
	// lastResort: each lastResort device's last resort, published (2xx)
	// before the first kill and never replaced.
	lastResort map[dev]kpd.Ref
	// served counts the claims answered 2xx with a device's last resort.
	served map[dev]int64
	// available is each device's number of available regular KeyPackages
	// as far as the test knows: read from the inventory after each
	// restart and from each publish's answer, lowered by each claim of a
	// regular one and zeroed by each claim that found none. It drifts by
	// the requests whose outcome is unknown and by answers that cross,
	// until the next restart or publish.
	available map[dev]int
	posted    map[string]posted
	acked     map[string]bool
	// unchecked: Welcome ids posted or acked since the last check.
	unchecked map[string]bool
}

func newLedger() *ledger {
	return &ledger{
		published:  map[kpd.Ref]dev{},
		claimedBy:  map[kpd.Ref]string{},
		lastResort: map[dev]kpd.Ref{},
		served:     map[dev]int64{},
		available:  map[dev]int{},
		posted:     map[string]posted{},
		acked:      map[string]bool{},
		unchecked:  map[string]bool{},
	}
}

// load is the traffic against one server, round after round.
type load struct {
	t       *testing.T
	suite   mls.Suite
	url     string
	devices []dev
	ledger  *ledger
	// answered counts this round's 2xx answers by kind of operation (for
	// claims, those that handed out a KeyPackage).
	answered [numOps]atomic.Int64
	// trigger kills the server after a chosen 2xx answer; set per round
	// before the workers start.
	trigger *trigger
}

func (l *load) client(did string) *client.Client { return client.New(l.url, did) }

// ok notes a 2xx answer to an operation of kind o: it fires the round's
// trigger first, so that the kill follows the answer as closely as it can.
func (l *load) ok(o op) {
	l.trigger.fire(o)
	l.answered[o].Add(1)
}

// call runs f with a bounded context; it reports whether the server
// answered 2xx.
func call[T any](ctx context.Context, f func(ctx context.Context) (T, error)) (T, bool) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	v, err := f(ctx)
	return v, err == nil
}

// trigger kills the server right after the first 2xx answer to an armed
// kind of operation.
type trigger struct {
	armed atomic.Int64 // the armed op, or -1
	kill  func()
	fired chan struct{}
}

func newTrigger(kill func()) *trigger {
	tr := &trigger{kill: kill, fired: make(chan struct{})}
	tr.armed.Store(-1)
	return tr
}

// arm makes the next 2xx answer to o kill the server; fired is closed
// once it has.
func (tr *trigger) arm(o op) { tr.armed.Store(int64(o)) }

// fire kills the server, once, if o is the armed kind of operation.
func (tr *trigger) fire(o op) {
	if tr.armed.Load() == int64(o) && tr.armed.CompareAndSwap(int64(o), -1) {
		tr.kill()
		close(tr.fired)
	}
}

// disarm reports whether it disarmed the trigger before it fired.
func (tr *trigger) disarm() bool {
	o := tr.armed.Load()
	return o >= 0 && tr.armed.CompareAndSwap(o, -1)
}

func (l *load) publisher(ctx context.Context, rng *rand.Rand) {
	lg := l.ledger
	for ctx.Err() == nil {
		d := l.devices[rng.IntN(len(l.devices))]
		lg.mu.Lock()
		n := min(8, d.target-lg.available[d])
		lg.mu.Unlock()
		if n <= 0 {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		var data [][]byte
		for range n {
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
		l.ok(opPublish)
		lg.mu.Lock()
		for _, r := range res.Results {
			lg.published[r.Ref] = d
		}
		for _, s := range res.Inventory.Suites {
			if s.CipherSuite == uint16(l.suite.ID) {
				lg.available[d] = s.Available
			}
		}
		lg.mu.Unlock()
	}
}

func (l *load) claimer(ctx context.Context, rng *rand.Rand, did string) {
	lg := l.ledger
	for ctx.Err() == nil {
		d := l.devices[rng.IntN(len(l.devices))]
		res, ok := call(ctx, func(ctx context.Context) (*kpd.ClaimResult, error) {
			return l.client(did).Claim(ctx, client.ClaimRequest{
				CipherSuite: uint16(l.suite.ID),
				Targets:     []kpd.ClaimTarget{{DID: d.did, Devices: []string{d.name}}},
			})
		})
		if !ok {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if len(res.KeyPackages) == 0 {
			// Nothing regular left (nor a last resort).
			lg.mu.Lock()
			lg.available[d] = 0
			lg.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			continue
		}
		l.ok(opClaim)
		kp := res.KeyPackages[0]
		ref := kp.Ref
		lg.mu.Lock()
		lr, hasLR := lg.lastResort[d]
		switch {
		case kp.DID != d.did || kp.Device != d.name:
			l.t.Errorf("a claim of %s handed out %s of %s/%s", d, ref, kp.DID, kp.Device)
		case kp.LastResort:
			if !hasLR || ref != lr {
				l.t.Errorf("a claim of %s handed out %s as its last resort; its last resort is %q", d, ref, lr)
			}
			lg.served[d]++
			lg.available[d] = 0 // last resorts go only when nothing else is left
		case hasLR && ref == lr:
			l.t.Errorf("a claim of %s handed out its last resort %s as a regular KeyPackage", d, ref)
		default:
			if prev, dup := lg.claimedBy[ref]; dup {
				lg.handedTwice = append(lg.handedTwice, fmt.Sprintf("%s to %s and %s", ref, prev, did))
			}
			if owner, ok := lg.published[ref]; ok && owner != d {
				l.t.Errorf("a claim of %s handed out %s, published to %s", d, ref, owner)
			}
			lg.claimedBy[ref] = did
			lg.available[d] = max(0, lg.available[d]-1)
		}
		lg.mu.Unlock()

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
			l.ok(opPost)
			lg.mu.Lock()
			lg.posted[pw.WelcomeID] = posted{dev: d, ref: ref, sender: did}
			lg.unchecked[pw.WelcomeID] = true
			lg.mu.Unlock()
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
				l.ok(opAck)
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
		wg.Go(func() { f(rand.New(rand.NewPCG(seed, uint64(i)))) })
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

// publishLastResorts publishes the last resort of each lastResort device;
// it runs before the first kill, so each device keeps exactly that one.
func (l *load) publishLastResorts(ctx context.Context) {
	t := l.t
	t.Helper()
	for _, d := range l.devices {
		if !d.lastResort {
			continue
		}
		bare, _, err := mlstest.KeyPackage(l.suite, mlstest.Options{Identity: d.did, LastResort: true})
		if err != nil {
			t.Fatal(err)
		}
		res, err := l.client(d.did).Publish(ctx, d.name, [][]byte{bare})
		if err != nil {
			t.Fatalf("publishing the last resort of %s: %v", d, err)
		}
		if len(res.Results) != 1 || !res.Results[0].LastResort {
			t.Fatalf("publishing the last resort of %s: results %+v", d, res.Results)
		}
		l.ledger.lastResort[d] = res.Results[0].Ref
	}
}

// resetRound clears the per-round counts and sets the round's trigger.
func (l *load) resetRound(tr *trigger) {
	for i := range l.answered {
		l.answered[i].Store(0)
	}
	l.trigger = tr
}

// checkRound fails the test if the round saw fewer than minPerRound 2xx
// answers of some kind of operation.
func (l *load) checkRound(round int) string {
	var counts []string
	for o := range numOps {
		n := l.answered[o].Load()
		if n < minPerRound {
			l.t.Errorf("round %d: only %d 2xx %s answers in %v (want at least %d): the load stalled", round, n, o, stallTimeout, minPerRound)
		}
		counts = append(counts, fmt.Sprintf("%s %d", o, n))
	}
	return strings.Join(counts, ", ")
}

// check verifies through the API of a restarted server what the ledger
// promised: published refs present, claimed ones never available again,
// last resorts still available and counting every claim that served them,
// posted Welcomes still there and acked ones still acked. With all, every
// Welcome is checked; otherwise those touched since the last check. It
// also resets the ledger's available counts from the inventories.
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
		lg.available[d] = 0
		inv, err := l.client(d.did).Inventory(ctx, d.name, true)
		if isNotFound(err) && lg.lastResort[d] == "" {
			continue // never published to (the published refs are checked below)
		}
		if err != nil {
			t.Fatalf("inventory of %s: %v", d, err)
		}
		for _, kp := range inv.KeyPackages {
			states[kp.Ref] = kp.State
		}
		var lr *kpd.LastResortInfo
		for _, s := range inv.Suites {
			if s.CipherSuite == uint16(l.suite.ID) {
				lg.available[d] = s.Available
				lr = s.LastResort
			}
		}
		if want, ok := lg.lastResort[d]; ok {
			switch {
			case lr == nil || lr.Ref != want:
				t.Errorf("the last resort of %s is %+v, want %s", d, lr, want)
			case lr.Served < lg.served[d]:
				t.Errorf("the last resort of %s was served %d times, but %d claims of it were answered 2xx", d, lr.Served, lg.served[d])
			}
		}
	}
	for ref, d := range lg.published {
		if _, ok := states[ref]; !ok {
			t.Errorf("KeyPackage %s published to %s (2xx) is gone", ref, d)
		}
	}
	for d, ref := range lg.lastResort {
		if st := states[ref]; st != kpd.StateAvailable {
			t.Errorf("last resort %s of %s is %q, want available", ref, d, st)
		}
	}
	for ref, claimer := range lg.claimedBy {
		if st := states[ref]; st != kpd.StateClaimed && st != kpd.StateConsumed {
			t.Errorf("KeyPackage %s claimed by %s (2xx) is %q after the restart", ref, claimer, st)
		}
	}
	// The Welcomes are many: check them from a few goroutines, which only
	// read the ledger (locked by this one) and states.
	ids := make(chan string)
	var wg sync.WaitGroup
	for range welcomeCheckers {
		wg.Go(func() {
			for id := range ids {
				l.checkWelcome(ctx, id, states)
			}
		})
	}
	for id := range lg.posted {
		if all || lg.unchecked[id] {
			ids <- id
		}
	}
	close(ids)
	wg.Wait()
	for _, d := range l.devices {
		list, err := l.client(d.did).Welcomes(ctx, d.name, client.ListOptions{})
		if isNotFound(err) {
			continue // a device nobody published to has no Welcomes
		}
		if err != nil {
			t.Fatalf("pending Welcomes of %s: %v", d, err)
		}
		for _, pw := range list {
			if lg.acked[pw.WelcomeID] {
				t.Errorf("Welcome %s acked (2xx) is pending again for %s", pw.WelcomeID, d)
			}
		}
	}
	clear(lg.unchecked)
}

// checkWelcome checks one posted Welcome for check: still there, for its
// KeyPackage, acked if an ack was answered 2xx, and its KeyPackage
// consumed then unless it is a last resort (those stay available, checked
// for every last resort). The caller holds the ledger's lock.
func (l *load) checkWelcome(ctx context.Context, id string, states map[kpd.Ref]kpd.KeyPackageState) {
	t, lg := l.t, l.ledger
	p := lg.posted[id]
	st, err := l.client(p.sender).WelcomeStatus(ctx, id)
	if err != nil {
		t.Errorf("Welcome %s posted (2xx) for %s: %v", id, p.dev, err)
		return
	}
	if len(st.Recipients) != 1 || st.Recipients[0].Ref != p.ref {
		t.Errorf("Welcome %s: recipients %+v, want %s", id, st.Recipients, p.ref)
		return
	}
	status := st.Recipients[0].Status
	switch {
	case lg.acked[id] && status != kpd.DeliveryAcked:
		t.Errorf("Welcome %s acked (2xx) is %q after the restart", id, status)
	case !lg.acked[id] && status != kpd.DeliveryPending && status != kpd.DeliveryAcked:
		t.Errorf("Welcome %s is %q", id, status)
	}
	if lg.acked[id] && p.ref != lg.lastResort[p.dev] && states[p.ref] != kpd.StateConsumed {
		t.Errorf("KeyPackage %s of acked Welcome %s is %q, want consumed", p.ref, id, states[p.ref])
	}
}

// isNotFound reports whether err is the server's NotFound answer.
func isNotFound(err error) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Code == kpd.CodeNotFound
}

// killAfterLoad lets the load run and kills srv. Half the rounds kill at a
// uniformly random moment in [minLoad, maxLoad); the other half kill right
// after the first 2xx answer, once minLoad has passed, to a randomly chosen
// kind of operation (or maxLoad-minLoad later if none comes): that is when
// an answer sent before its commit is lost. Either way the kill waits
// until the round has seen minPerRound answers of each kind (up to
// stallTimeout), so that a slow machine does not fail checkRound. It
// returns how it killed.
func (l *load) killAfterLoad(rng *rand.Rand, srv *server, tr *trigger) string {
	start := time.Now()
	defer srv.kill()
	if rng.IntN(2) == 0 {
		time.Sleep(minLoad + time.Duration(rng.Int64N(int64(maxLoad-minLoad))))
		l.waitForMinimum(start)
		return fmt.Sprintf("killed after %v", time.Since(start).Round(time.Millisecond))
	}
	o := op(rng.IntN(int(numOps)))
	time.Sleep(minLoad)
	l.waitForMinimum(start)
	tr.arm(o)
	select {
	case <-tr.fired:
	case <-time.After(maxLoad - minLoad):
		if tr.disarm() {
			return fmt.Sprintf("killed after %v: no 2xx %s came", time.Since(start).Round(time.Millisecond), o)
		}
		<-tr.fired // it fired meanwhile
	}
	return fmt.Sprintf("killed right after a 2xx %s, after %v", o, time.Since(start).Round(time.Millisecond))
}

// waitForMinimum waits until the round has seen minPerRound 2xx answers
// of each kind of operation, or until stallTimeout after start.
func (l *load) waitForMinimum(start time.Time) {
	for time.Since(start) < stallTimeout {
		enough := true
		for o := range numOps {
			enough = enough && l.answered[o].Load() >= minPerRound
		}
		if enough {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKillNineLosesNothing kills `kpd serve` with SIGKILL under load and
// checks after each restart that nothing a 2xx answer reported was lost
// or handed out twice (see the package documentation). A SIGKILL ends the
// process but keeps the kernel's page cache, so the test covers process
// crashes, not power loss: writes that reached the page cache without an
// fsync survive it.
//
// KPD_CRASH_ROUNDS sets the number of kills and KPD_CRASH_SEED the seed of
// the kill timing and of the load; the seed is logged for replay.
func TestKillNineLosesNothing(t *testing.T) {
	n := rounds(t)
	s := seed(t)
	t.Logf("KPD_CRASH_SEED=%d", s)
	bin := buildKPD(t)
	db := filepath.Join(t.TempDir(), "kpd.db")
	suite, _ := mls.NewRegistry().Lookup(1)
	l := &load{t: t, suite: suite, ledger: newLedger()}
	for i := range 3 {
		did := fmt.Sprintf("did:plc:crashuser%d", i)
		l.devices = append(l.devices,
			dev{did: did, name: "phone", target: 60},
			dev{did: did, name: "laptop", target: 4, lastResort: true})
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(s, 0))
	// restart starts a server on the database and checks it; killed is
	// the server killed last, whose log may explain a failed check.
	var killed *server
	restart := func(round int, all bool) *server {
		srv := startServer(t, bin, db)
		l.url = srv.url
		l.check(ctx, all)
		if t.Failed() && killed != nil {
			t.Fatalf("the check after the kill of round %d failed (KPD_CRASH_SEED=%d); the killed server's log tail:\n%s",
				round-1, s, killed.log())
		}
		return srv
	}
	for round := range n {
		srv := restart(round, false)
		if round == 0 {
			l.publishLastResorts(ctx)
		}

		tr := newTrigger(srv.signal)
		l.resetRound(tr)
		loadCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		loadSeed := rng.Uint64()
		go func() { l.run(loadCtx, loadSeed); close(done) }()
		how := l.killAfterLoad(rng, srv, tr)
		stop()
		<-done
		killed = srv
		verify(t, bin, db)
		t.Logf("round %d: %s; 2xx answers: %s", round, how, l.checkRound(round))
		if t.Failed() {
			t.Fatalf("round %d failed (KPD_CRASH_SEED=%d); server log tail:\n%s", round, s, srv.log())
		}
	}
	restart(n, true).kill()

	lg := l.ledger
	var served int64
	for _, n := range lg.served {
		served += n
	}
	t.Logf("%d kills: %d KeyPackages published, %d claimed, %d last resorts served, %d Welcomes posted, %d acked",
		n, len(lg.published), len(lg.claimedBy), served, len(lg.posted), len(lg.acked))
	if served == 0 {
		t.Error("no claim was served a last resort")
	}
	if t.Failed() {
		t.Fatalf("KPD_CRASH_SEED=%d", s)
	}
}
