// Package webhook delivers kpd's outbox events (SPEC section 8) to an
// operator's HTTP endpoint, and lets receivers verify them.
//
// A Dispatcher reads the durable outbox in Seq order and POSTs each event as
// JSON, signed with HMAC-SHA256 (see Sign and Verify). A 2xx answer deletes
// the event from the outbox; anything else is retried with exponential
// backoff and full jitter, until the event is older than MaxAge: then it
// is given up (deleted undelivered). Delivery is at least once: an event
// delivered just before a crash, or whose deletion failed, is sent again
// with the same Kpd-Event-Id, by which receivers drop duplicates. The
// events of one device are delivered one at a time and in order: while one
// of them fails, that device's later events wait, and other devices' events
// go on. Up to Concurrency devices' events are in flight at once, so a slow
// receiver does not hold every push hint behind one request; there is no
// order between different devices' events.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
)

// Defaults of Dispatcher.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultPollInterval = time.Second
	DefaultBackoffBase  = time.Second
	DefaultBackoffCap   = 5 * time.Minute
	DefaultConcurrency  = 8
	// pageSize is how many events one outbox read returns.
	pageSize = 100
)

// Headers of a delivery besides SignatureHeader.
const (
	// EventIDHeader is the event's stable id (kpd.Event.ID), equal across
	// retries: receivers drop the duplicates of an id they processed.
	EventIDHeader = "Kpd-Event-Id"
	// EventTypeHeader is the event's type (kpd.Event.Type), for routing
	// without parsing the body.
	EventTypeHeader = "Kpd-Event-Type"
)

// Outcomes of one delivery attempt, as passed to Dispatcher.Observer.
const (
	// OutcomeDelivered: the receiver answered 2xx; the event is deleted.
	OutcomeDelivered = "delivered"
	// OutcomeFailed: the attempt failed; the event is retried after a
	// backoff.
	OutcomeFailed = "failed"
	// OutcomeGivenUp: the attempt failed and the event was older than
	// Dispatcher.MaxAge: it is deleted undelivered and never retried.
	OutcomeGivenUp = "given_up"
)

// Source is the durable outbox; *kv.DB implements it.
type Source interface {
	// PendingEvents returns up to limit undelivered events with Seq >
	// afterSeq, in Seq order.
	PendingEvents(ctx context.Context, afterSeq uint64, limit int) ([]kpd.Event, error)
	// DeleteEvents removes delivered events; unknown seqs are ignored.
	DeleteEvents(ctx context.Context, seqs []uint64) error
}

// Dispatcher delivers the events of Source to URL. Configure it before Run
// and do not change it afterwards.
type Dispatcher struct {
	// Source is the outbox; required.
	Source Source
	// URL receives one POST per event; required.
	URL string
	// Secret signs every request (SignatureHeader); required.
	Secret []byte
	// Client sends the requests; nil means a client with DefaultTimeout
	// that keeps a connection per concurrent delivery open. Redirects are
	// never followed, whatever the client's CheckRedirect: a 3xx answer is
	// a failed attempt (a followed 301, 302 or 303 becomes a GET without
	// the event, which a 2xx answer would then acknowledge).
	Client *http.Client
	// Concurrency is how many events are in flight at once, each of a
	// different device; 0 means DefaultConcurrency. 1 delivers one event
	// at a time.
	Concurrency int
	// Clock gives the signature timestamps and the age of events (see
	// MaxAge); nil means time.Now. It is called from concurrent
	// deliveries. Waiting (polling and backoff) uses real timers.
	Clock kpd.Clock
	// MaxAge gives events up: when an attempt fails and the event was
	// created (kpd.Event.CreatedAt) more than MaxAge before Clock, the
	// event is deleted from the outbox undelivered, reported as
	// OutcomeGivenUp, and its device's next event is attempted without
	// waiting for a backoff. A receiver that refuses an event for ever
	// then holds up its device's later events for little more than MaxAge
	// (until the first attempt after it). 0 means never give up.
	MaxAge time.Duration
	// Logger receives a line per failed attempt (warn), per event given up
	// (error) and per delivered event (debug). It never sees the secret or
	// the request body.
	Logger zerolog.Logger
	// Observer, when set, is called with OutcomeDelivered, OutcomeFailed
	// or OutcomeGivenUp after every attempt (for the
	// kpd_webhook_deliveries_total metric).
	Observer func(outcome string)
	// PollInterval is how often the outbox is read when Notify is not
	// called; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// Backoff returns how long to wait before the next attempt after the
	// n-th consecutive failure (n from 1) of a device's event; nil means
	// FullJitter(DefaultBackoffBase, DefaultBackoffCap).
	Backoff func(n int) time.Duration

	wakeOnce sync.Once
	wake     chan struct{}
}

// FullJitter is exponential backoff with full jitter: after the n-th
// failure, a uniformly random wait in [0, min(limit, base·2^(n-1))].
func FullJitter(base, limit time.Duration) func(n int) time.Duration {
	return func(n int) time.Duration {
		ceiling := base
		for i := 1; i < n && ceiling < limit; i++ {
			ceiling *= 2
		}
		ceiling = min(ceiling, limit)
		if ceiling <= 0 {
			return 0
		}
		return rand.N(ceiling + 1)
	}
}

// Notify wakes a running dispatcher to read the outbox now, e.g. after a
// commit that wrote events. It never blocks and is safe to call at any
// time, from any goroutine.
func (d *Dispatcher) Notify() {
	select {
	case d.wakeChan() <- struct{}{}:
	default:
	}
}

// wakeChan returns the channel of Notify, made on first use.
func (d *Dispatcher) wakeChan() chan struct{} {
	d.wakeOnce.Do(func() { d.wake = make(chan struct{}, 1) })
	return d.wake
}

// retry is the backoff state of a device whose event failed.
type retry struct {
	failures int
	next     time.Time
}

// deviceKey names a device in the retry state.
type deviceKey struct{ did, device string }

// Run delivers events until ctx is done, then returns; an attempt in
// progress is abandoned (its event stays in the outbox). Failures are
// logged and retried, never returned.
//
// Run passes over the outbox when Notify is called, every PollInterval,
// and when a retry is due. Outbox sequences grow in commit order, so most
// passes read only the events added since the last one; a pass reads the
// whole outbox when a device's retry is due (at most once per
// PollInterval, and spending at most a tenth of the time reading: a large
// outbox behind a receiver that is down spaces these passes out), and
// after a failure to read or delete events.
func (d *Dispatcher) Run(ctx context.Context) {
	wake := d.wakeChan()
	p := &passes{
		d:           d,
		client:      d.Client,
		concurrency: d.Concurrency,
		backoff:     d.Backoff,
		poll:        d.PollInterval,
		retries:     map[deviceKey]*retry{},
		rescan:      true,
	}
	if p.concurrency <= 0 {
		p.concurrency = DefaultConcurrency
	}
	if p.client == nil {
		// http.DefaultTransport keeps 2 idle connections per host: more
		// concurrent deliveries would open a new one each time.
		tr := &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
		if def, ok := http.DefaultTransport.(*http.Transport); ok {
			tr = def.Clone()
		}
		tr.MaxIdleConnsPerHost = p.concurrency
		p.client = &http.Client{Timeout: DefaultTimeout, Transport: tr}
		defer tr.CloseIdleConnections()
	}
	noRedirects := *p.client
	noRedirects.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	p.client = &noRedirects
	if p.backoff == nil {
		p.backoff = FullJitter(DefaultBackoffBase, DefaultBackoffCap)
	}
	if p.poll <= 0 {
		p.poll = DefaultPollInterval
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-wake:
		}
		p.pass(ctx)
		timer.Reset(p.nextWait())
	}
}

// passes is the state Run keeps across passes over the outbox.
type passes struct {
	d           *Dispatcher
	client      *http.Client
	concurrency int
	backoff     func(int) time.Duration
	poll        time.Duration
	// retries holds the devices whose oldest event failed: their later
	// events wait for it.
	retries map[deviceKey]*retry
	// high is the highest Seq examined: events above it are new.
	high uint64
	// lastFull is when the last pass over the whole outbox started, and
	// fullRead how long that pass spent reading the outbox.
	lastFull time.Time
	fullRead time.Duration
	// rescan asks for a pass over the whole outbox.
	rescan bool
}

// fullReadShare bounds the time passes over the whole outbox spend reading
// it: while a receiver is down, retries fall due all the time, and a pass
// reads every event (about a second for a million) before it reaches the
// device whose retry is due.
const fullReadShare = 10

// fullGap is the least time between the starts of passes over the whole
// outbox for retries: the poll interval, or fullReadShare times as long as
// the last one spent reading, whichever is longer.
func (p *passes) fullGap() time.Duration {
	return max(p.poll, fullReadShare*p.fullRead)
}

// retryDue reports whether a device's retry is due and a pass over the
// whole outbox is allowed.
func (p *passes) retryDue() bool {
	if time.Since(p.lastFull) < p.fullGap() {
		return false
	}
	now := time.Now()
	for _, rt := range p.retries {
		if !now.Before(rt.next) {
			return true
		}
	}
	return false
}

// nextWait is how long Run waits for a Notify before the next pass: the
// poll interval, or less when a retry falls due sooner (but not before a
// pass over the whole outbox is allowed again, see fullGap).
func (p *passes) nextWait() time.Duration {
	wait := p.poll
	gate := time.Until(p.lastFull.Add(p.fullGap()))
	for _, rt := range p.retries {
		wait = min(wait, max(time.Until(rt.next), gate))
	}
	return max(wait, 0)
}

// pass attempts the events of devices that are not blocked: from the
// start of the outbox when a retry is due or a rescan was asked for,
// otherwise the events added since the last pass. It reads the outbox a
// page at a time and delivers a page's events device by device: each
// device's in Seq order, one at a time, up to p.concurrency devices at
// once; the next page waits for them all. A device with a failed event is
// blocked for the whole pass from that event on, and, until its retry is
// due and a whole pass reaches the event again, in later passes too; an
// event given up (MaxAge) blocks nothing.
func (p *passes) pass(ctx context.Context) {
	full := p.rescan || p.retryDue()
	after := p.high
	if full {
		after, p.lastFull, p.rescan, p.fullRead = 0, time.Now(), false, 0
	}
	blocked := map[deviceKey]bool{}
	seen := map[deviceKey]bool{}
	for ctx.Err() == nil {
		readStart := time.Now()
		events, err := p.d.Source.PendingEvents(ctx, after, pageSize)
		if full {
			p.fullRead += time.Since(readStart)
		}
		if err != nil {
			if ctx.Err() == nil {
				p.rescan = true
				p.d.Logger.Error().Err(err).Msg("webhook: read outbox")
			}
			return
		}
		var runs []*deviceRun
		byDevice := map[deviceKey]*deviceRun{}
		for _, ev := range events {
			p.high = max(p.high, ev.Seq)
			key := deviceKey{ev.DID, ev.Device}
			seen[key] = true
			if blocked[key] {
				continue
			}
			if rt := p.retries[key]; rt != nil && (!full || time.Now().Before(rt.next)) {
				blocked[key] = true
				continue
			}
			r := byDevice[key]
			if r == nil {
				r = &deviceRun{key: key}
				byDevice[key] = r
				runs = append(runs, r)
			}
			r.events = append(r.events, ev)
		}
		p.deliver(ctx, runs)
		// done are the events delivered or given up in this page.
		var done []uint64
		for _, r := range runs {
			for _, a := range r.attempts {
				switch {
				case a.err == nil:
					delete(p.retries, r.key)
					done = append(done, a.ev.Seq)
					p.d.observe(OutcomeDelivered)
					p.d.Logger.Debug().Str("event_id", a.ev.ID).Str("type", a.ev.Type).Msg("webhook delivered")
				case a.givenUp:
					// The device's next event is not blocked by this one.
					p.drop(r.key, a.ev, a.age, a.err)
					done = append(done, a.ev.Seq)
				default:
					blocked[r.key] = true
					p.failed(r.key, a.ev, a.err)
				}
			}
		}
		if len(done) > 0 {
			// A failure here only means duplicates: the next pass reads
			// the whole outbox and attempts these events again (a
			// dropped one is dropped again if it fails), and receivers
			// drop duplicates by id.
			if err := p.d.Source.DeleteEvents(context.WithoutCancel(ctx), done); err != nil {
				p.rescan = true
				p.d.Logger.Error().Err(err).Int("events", len(done)).Msg("webhook: delete delivered and dropped events")
			}
		}
		if len(events) < pageSize {
			break
		}
		after = events[len(events)-1].Seq
	}
	if full && ctx.Err() == nil {
		// Devices with nothing left in the outbox (their events were
		// delivered, dropped or deleted with the device) need no backoff
		// state.
		for key := range p.retries {
			if !seen[key] {
				delete(p.retries, key)
			}
		}
	}
}

// deviceRun is one device's events of an outbox page, and what became of those
// attempted.
type deviceRun struct {
	key      deviceKey
	events   []kpd.Event // in Seq order
	attempts []attempt
}

// attempt is the outcome of delivering one event.
type attempt struct {
	ev  kpd.Event
	err error // nil: delivered
	// givenUp: the attempt failed and the event was older than MaxAge
	// (by age).
	givenUp bool
	age     time.Duration
}

// deliver attempts the runs, up to p.concurrency at once, and returns when
// all are done. Each run's events go in order until one fails (and is not
// given up) or ctx is done; an attempt abandoned for ctx is not recorded.
func (p *passes) deliver(ctx context.Context, runs []*deviceRun) {
	todo := make(chan *deviceRun, len(runs))
	for _, r := range runs {
		todo <- r
	}
	close(todo)
	var wg sync.WaitGroup
	for range min(p.concurrency, len(runs)) {
		wg.Go(func() {
			for r := range todo {
				p.deliverRun(ctx, r)
			}
		})
	}
	wg.Wait()
}

func (p *passes) deliverRun(ctx context.Context, r *deviceRun) {
	for _, ev := range r.events {
		if ctx.Err() != nil {
			return
		}
		err := p.d.deliver(ctx, p.client, ev)
		if err != nil && ctx.Err() != nil {
			return
		}
		a := attempt{ev: ev, err: err}
		if err != nil {
			a.age = p.d.Clock.Now().Sub(ev.CreatedAt)
			a.givenUp = p.d.MaxAge > 0 && a.age > p.d.MaxAge
		}
		r.attempts = append(r.attempts, a)
		if err != nil && !a.givenUp {
			return
		}
	}
}

// failed records a failed attempt of ev and schedules the device's retry.
func (p *passes) failed(key deviceKey, ev kpd.Event, err error) {
	rt := p.retries[key]
	if rt == nil {
		rt = &retry{}
		p.retries[key] = rt
	}
	rt.failures++
	wait := p.backoff(rt.failures)
	rt.next = time.Now().Add(wait)
	p.d.observe(OutcomeFailed)
	p.d.Logger.Warn().Err(err).
		Str("event_id", ev.ID).
		Str("type", ev.Type).
		Int("failures", rt.failures).
		Dur("retry_in", wait).
		Msg("webhook delivery failed")
}

// drop records the failed last attempt of ev, which is age old, and gives
// the event up: its device has no backoff state left.
func (p *passes) drop(key deviceKey, ev kpd.Event, age time.Duration, err error) {
	failures := 1
	if rt := p.retries[key]; rt != nil {
		failures += rt.failures
	}
	delete(p.retries, key)
	p.d.observe(OutcomeGivenUp)
	p.d.Logger.Error().Err(err).
		Str("event_id", ev.ID).
		Str("type", ev.Type).
		Dur("age", age).
		Dur("max_age", p.d.MaxAge).
		Int("failures", failures).
		Msg("webhook event given up")
}

func (d *Dispatcher) observe(outcome string) {
	if d.Observer != nil {
		d.Observer(outcome)
	}
}

// maxResponseDrain is how much of a response body is read (and dropped) so
// that the connection can be reused.
const maxResponseDrain = 64 << 10

// deliver POSTs one event; a non-2xx answer is an error.
func (d *Dispatcher) deliver(ctx context.Context, client *http.Client, ev kpd.Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kpd-webhook")
	req.Header.Set(SignatureHeader, Sign(d.Secret, d.Clock.Now(), body))
	req.Header.Set(EventIDHeader, ev.ID)
	req.Header.Set(EventTypeHeader, ev.Type)
	resp, err := client.Do(req)
	if err != nil {
		// Not the *url.Error itself: it names the URL, whose query may
		// hold a credential of the receiver, and the error is logged.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.CopyN(io.Discard, resp.Body, maxResponseDrain)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}
