package bench

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kpd-dir/kpd"
)

// OpReport is the throughput and latency of one kind of operation.
type OpReport struct {
	// Op names the operation: publish, claim, post_welcome, list_welcomes,
	// ack, inventory, roundtrip (claim, post, list and ack in a row) or noop.
	Op string `json:"op"`
	// Count is the number of successful operations.
	Count int64 `json:"count"`
	// Errors is the number of failed operations (not in the latencies).
	Errors int64 `json:"errors"`
	// Items counts what the operations moved: KeyPackages stored by
	// publishes, KeyPackages handed out by claims.
	Items     int64   `json:"items,omitempty"`
	PerSecond float64 `json:"per_second"`
	// ItemsPerSecond is Items over the timed phase.
	ItemsPerSecond float64 `json:"items_per_second,omitempty"`
	// Latencies of successful operations, in milliseconds.
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P95Ms  float64 `json:"p95_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
}

// ErrorCount counts one kind of failure of one operation.
type ErrorCount struct {
	Op    string   `json:"op"`
	Code  kpd.Code `json:"code"`
	Count int64    `json:"count"`
	// Sample is the message of the first such failure.
	Sample string `json:"sample"`
}

// opStats accumulates one operation's results within one worker; workers
// never share one, so it needs no lock.
type opStats struct {
	latencies []time.Duration
	errors    int64
	items     int64
}

// recorder holds one worker's results by operation name.
type recorder struct {
	ops    map[string]*opStats
	errors map[errorKey]*ErrorCount
}

type errorKey struct {
	op   string
	code kpd.Code
}

func newRecorder() *recorder {
	return &recorder{ops: map[string]*opStats{}, errors: map[errorKey]*ErrorCount{}}
}

func (r *recorder) stats(op string) *opStats {
	s := r.ops[op]
	if s == nil {
		s = &opStats{}
		r.ops[op] = s
	}
	return s
}

// ok records a successful operation that took d and moved items.
func (r *recorder) ok(op string, d time.Duration, items int) {
	s := r.stats(op)
	s.latencies = append(s.latencies, d)
	s.items += int64(items)
}

// fail records a failed operation.
func (r *recorder) fail(op string, err error) {
	r.stats(op).errors++
	k := errorKey{op, codeOf(err)}
	e := r.errors[k]
	if e == nil {
		e = &ErrorCount{Op: op, Code: k.code, Sample: err.Error()}
		r.errors[k] = e
	}
	e.Count++
}

// merge adds o's results to r.
func (r *recorder) merge(o *recorder) {
	for name, s := range o.ops {
		t := r.stats(name)
		t.latencies = append(t.latencies, s.latencies...)
		t.errors += s.errors
		t.items += s.items
	}
	for k, e := range o.errors {
		if t := r.errors[k]; t != nil {
			t.Count += e.Count
		} else {
			c := *e
			r.errors[k] = &c
		}
	}
}

// total is the number of operations recorded, successful or not.
func (r *recorder) total() int64 {
	var n int64
	for _, s := range r.ops {
		n += int64(len(s.latencies)) + s.errors
	}
	return n
}

// reports summarises r over a timed phase of elapsed, in opOrder.
func (r *recorder) reports(elapsed time.Duration) ([]OpReport, []ErrorCount) {
	names := make([]string, 0, len(r.ops))
	for name := range r.ops {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return opRank(names[i]) < opRank(names[j]) })
	secs := elapsed.Seconds()
	ops := make([]OpReport, 0, len(names))
	for _, name := range names {
		s := r.ops[name]
		lat := slices.Clone(s.latencies)
		slices.Sort(lat)
		rep := OpReport{Op: name, Count: int64(len(lat)), Errors: s.errors, Items: s.items}
		if secs > 0 {
			rep.PerSecond = float64(rep.Count) / secs
			rep.ItemsPerSecond = float64(s.items) / secs
		}
		if len(lat) > 0 {
			var sum time.Duration
			for _, d := range lat {
				sum += d
			}
			rep.MeanMs = ms(sum / time.Duration(len(lat)))
			rep.P50Ms = ms(percentile(lat, 50))
			rep.P95Ms = ms(percentile(lat, 95))
			rep.P99Ms = ms(percentile(lat, 99))
			rep.MaxMs = ms(lat[len(lat)-1])
		}
		ops = append(ops, rep)
	}
	errs := make([]ErrorCount, 0, len(r.errors))
	for _, e := range r.errors {
		errs = append(errs, *e)
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Count > errs[j].Count })
	return ops, errs
}

// opOrder is the order of operations in reports; others sort last.
var opOrder = []string{opPublish, opClaim, opPostWelcome, opListWelcomes, opAck, opInventory, opRoundtrip, opNoop}

func opRank(name string) string {
	if i := slices.Index(opOrder, name); i >= 0 {
		return fmt.Sprintf("%02d", i)
	}
	return "99" + name
}

// percentile returns the p-th percentile (nearest rank) of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// commitTimes is a kv.Observer that records how long each commit of the
// in-process store took, between start and stop (the timed phase); it
// ignores every other change.
type commitTimes struct {
	mu   sync.Mutex
	on   bool
	took []time.Duration
}

// start forgets what was recorded and starts recording.
func (c *commitTimes) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on, c.took = true, nil
}

// stop stops recording and returns the commit times, sorted.
func (c *commitTimes) stop() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = false
	slices.Sort(c.took)
	return c.took
}

func (c *commitTimes) CommitBatch(_ int, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.on {
		c.took = append(c.took, d)
	}
}

func (*commitTimes) Claimed(uint16, bool)               {}
func (*commitTimes) Consumed(uint16)                    {}
func (*commitTimes) Published(uint16, int)              {}
func (*commitTimes) ClaimMiss(kpd.Code)                 {}
func (*commitTimes) WelcomePosted()                     {}
func (*commitTimes) DeliveryFinished(kpd.DeliveryState) {}
func (*commitTimes) WelcomeRejected(kpd.Code)           {}
