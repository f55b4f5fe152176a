// Package metrics exposes kpd's Prometheus metrics (SPEC section 9), all
// prefixed kpd_, on a private registry together with the Go runtime and
// process collectors.
//
// A Metrics value is the one sink of every counter: it implements the
// store's observer (kv.Observer), the HTTP API's request observer
// (httpapi.RequestObserver), and has methods to pass as the hooks of the
// rate limiter (RateLimited), the webhook dispatcher (WebhookDelivery) and
// the sweeper (Swept). Gauges of stored state (KeyPackages by suite, the
// distribution of pool sizes, the database size, the outbox backlog) are
// read from the store's maintained counters on every scrape, and so are
// never stale.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/ratelimit"
	"github.com/kpd-dir/kpd/webhook"
)

// namespace prefixes every metric name.
const namespace = "kpd"

// DefaultStatsTimeout is the default of Options.StatsTimeout.
const DefaultStatsTimeout = 5 * time.Second

// StatsSource reports the store's totals; *kv.DB implements it.
type StatsSource interface {
	Stats(ctx context.Context) (kpd.Stats, error)
}

// Options configure New. Every field is optional.
type Options struct {
	// StatsTimeout bounds one read of the store's Stats (see
	// CollectStats); 0 means DefaultStatsTimeout.
	StatsTimeout time.Duration
	// Logger receives scrape errors.
	Logger zerolog.Logger
}

// Metrics holds kpd's metrics. Its methods are safe for concurrent use.
type Metrics struct {
	registry     *prometheus.Registry
	logger       zerolog.Logger
	statsTimeout time.Duration

	published         *prometheus.CounterVec
	claimed           *prometheus.CounterVec
	consumed          *prometheus.CounterVec
	claimMisses       *prometheus.CounterVec
	welcomesPosted    prometheus.Counter
	deliveries        *prometheus.CounterVec
	retrievalFailures *prometheus.CounterVec
	requests          *prometheus.CounterVec
	requestDuration   *prometheus.HistogramVec
	commitBatchSize   prometheus.Histogram
	commitDuration    prometheus.Histogram
	rateLimited       *prometheus.CounterVec
	limitExceeded     *prometheus.CounterVec
	webhookDeliveries *prometheus.CounterVec
	sweepDeleted      *prometheus.CounterVec
	sweepFailures     prometheus.Counter
	// suites are the configured cipher suites (InitSuites).
	suites atomic.Pointer[[]uint16]
}

// New returns the metrics of one kpd server, registered on a registry of
// their own.
func New(opts Options) *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	m := &Metrics{
		registry:     prometheus.NewRegistry(),
		logger:       opts.Logger,
		statsTimeout: opts.StatsTimeout,

		published:   counter("key_packages_published_total", "KeyPackages stored by publishes (duplicates not counted).", "suite"),
		claimed:     counter("key_packages_claimed_total", "KeyPackages handed out by claims; kind is regular or last_resort.", "suite", "kind"),
		consumed:    counter("key_packages_consumed_total", "KeyPackages consumed by an acknowledged or rejected Welcome.", "suite"),
		claimMisses: counter("key_package_claim_misses_total", "Claim targets that got no KeyPackage, by reason (NoKeyPackages, Exhausted).", "reason"),
		welcomesPosted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "welcomes_posted_total",
			Help: "Welcomes stored (a repeated post of the same Welcome is not counted)."}),
		deliveries:        counter("welcome_deliveries_total", "Welcome deliveries that ended, by outcome (acked, rejected, expired).", "outcome"),
		retrievalFailures: counter("welcome_retrieval_failures_total", "Welcome deliveries that devices rejected, by the reason they gave.", "reason"),
		requests:          counter("http_requests_total", "HTTP requests answered, by route template and status code.", "route", "code"),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route template (long-polls included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"route"}),
		commitBatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "store_commit_batch_size",
			Help:    "Write operations committed together by one store transaction (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		commitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "store_commit_duration_seconds",
			Help:    "Time of one store write transaction, fsync included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		rateLimited:       counter("rate_limited_total", "Requests refused by a rate limit, by limit.", "limit"),
		limitExceeded:     counter("limit_exceeded_total", "Requests refused for a size or count limit (413 PayloadTooLarge, 422 QuotaExceeded), by limit; rate limits are in rate_limited_total.", "limit"),
		webhookDeliveries: counter("webhook_deliveries_total", "Webhook delivery attempts, by outcome: delivered, failed (retried) or given_up (failed, and the event was older than the maximum age: deleted undelivered).", "outcome"),
		sweepDeleted:      counter("sweep_deleted_total", "Records the sweeper deleted or expired, by kind.", "kind"),
		sweepFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "sweep_failures_total",
			Help: "Sweeps that failed (logged)."}),
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.published, m.claimed, m.consumed, m.claimMisses, m.welcomesPosted, m.deliveries,
		m.retrievalFailures, m.requests, m.requestDuration, m.commitBatchSize, m.commitDuration,
		m.rateLimited, m.limitExceeded, m.webhookDeliveries, m.sweepDeleted, m.sweepFailures,
	)
	m.initLabels()
	return m
}

// CollectStats makes every scrape read src for the gauges of stored
// state: kpd_key_packages_available{suite} with its claimed and last
// resort siblings, kpd_device_key_packages, kpd_devices, kpd_welcomes,
// kpd_welcome_deliveries_by_state{state}, kpd_webhook_pending_events,
// kpd_db_size_bytes and, for a store that counts them (*kv.DB),
// kpd_webhook_dropped_events_total. The store is usually opened with m as its Observer,
// hence a method and not an option. Call it at most once.
func (m *Metrics) CollectStats(src StatsSource) {
	timeout := m.statsTimeout
	if timeout <= 0 {
		timeout = DefaultStatsTimeout
	}
	m.registry.MustRegister(newStatsCollector(src, timeout, &m.suites))
}

// CollectLastBackup makes every scrape read last, the time of the newest
// backup snapshot (the zero time when there is none), for
// kpd_backup_last_success_timestamp_seconds, which reads 0 then; pass
// backup.Scheduler.LastSuccess. Without it the metric is absent. Call it
// at most once.
func (m *Metrics) CollectLastBackup(last func() time.Time) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace,
		Name: "backup_last_success_timestamp_seconds",
		Help: "Unix time of the newest backup snapshot; 0 when there is none."},
		func() float64 {
			t := last()
			if t.IsZero() {
				return 0
			}
			return float64(t.UnixNano()) / 1e9
		}))
}

// initLabels creates the series of every known label value at zero, so that
// rate() and increase() see the first event of each.
func (m *Metrics) initLabels() {
	for _, c := range []kpd.Code{kpd.CodeNoKeyPackages, kpd.CodeExhausted} {
		m.claimMisses.WithLabelValues(string(c))
	}
	for _, s := range []kpd.DeliveryState{kpd.DeliveryAcked, kpd.DeliveryRejected, kpd.DeliveryExpired} {
		m.deliveries.WithLabelValues(string(s))
	}
	for _, c := range []kpd.Code{kpd.ReasonNoMatchingKeyPackage, kpd.ReasonInvalidWelcome, kpd.ReasonOther} {
		m.retrievalFailures.WithLabelValues(string(c))
	}
	for _, l := range []string{ratelimit.PublishPerDID, ratelimit.ClaimsPerPair, ratelimit.ClaimsPerClaimer} {
		m.rateLimited.WithLabelValues(l)
	}
	for _, o := range []string{webhook.OutcomeDelivered, webhook.OutcomeFailed, webhook.OutcomeGivenUp} {
		m.webhookDeliveries.WithLabelValues(o)
	}
	for _, l := range kpd.Limits {
		m.limitExceeded.WithLabelValues(l)
	}
}

// InitSuites creates the per-suite series of the configured cipher suites
// at zero: the published, claimed and consumed counters, and (with
// CollectStats) the available, claimed and last-resort gauges of a suite
// that has no KeyPackage yet. A fresh server then shows every series its
// dashboards and alerts name. Call it before serving the metrics.
func (m *Metrics) InitSuites(suites []uint16) {
	for _, s := range suites {
		suite := suiteLabel(s)
		m.published.WithLabelValues(suite)
		m.claimed.WithLabelValues(suite, "regular")
		m.claimed.WithLabelValues(suite, "last_resort")
		m.consumed.WithLabelValues(suite)
	}
	m.suites.Store(&suites)
}

// Handler serves the metrics in the Prometheus text (or OpenMetrics)
// format. A failing collector (the store's Stats) is logged and left out;
// the other metrics are still served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorLog:      errorLogger{m.logger},
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.registry,
	})
}

// errorLogger adapts zerolog to promhttp's error log.
type errorLogger struct{ l zerolog.Logger }

func (e errorLogger) Println(v ...any) { e.l.Error().Msgf("metrics: %v", v...) }

func suiteLabel(suite uint16) string { return strconv.Itoa(int(suite)) }

// Published counts n KeyPackages of suite stored by a publish (kv.Observer).
func (m *Metrics) Published(suite uint16, n int) {
	m.published.WithLabelValues(suiteLabel(suite)).Add(float64(n))
}

// Claimed counts one KeyPackage handed out by a claim (kv.Observer).
func (m *Metrics) Claimed(suite uint16, lastResort bool) {
	kind := "regular"
	if lastResort {
		kind = "last_resort"
	}
	m.claimed.WithLabelValues(suiteLabel(suite), kind).Inc()
}

// Consumed counts one KeyPackage consumed by an ack or reject (kv.Observer).
func (m *Metrics) Consumed(suite uint16) { m.consumed.WithLabelValues(suiteLabel(suite)).Inc() }

// ClaimMiss counts a claim target that got nothing (kv.Observer).
func (m *Metrics) ClaimMiss(reason kpd.Code) { m.claimMisses.WithLabelValues(string(reason)).Inc() }

// WelcomePosted counts a newly stored Welcome (kv.Observer).
func (m *Metrics) WelcomePosted() { m.welcomesPosted.Inc() }

// DeliveryFinished counts a delivery that left the pending state
// (kv.Observer).
func (m *Metrics) DeliveryFinished(outcome kpd.DeliveryState) {
	m.deliveries.WithLabelValues(string(outcome)).Inc()
}

// WelcomeRejected counts a delivery a device rejected, by its reason
// (kv.Observer).
func (m *Metrics) WelcomeRejected(reason kpd.Code) {
	m.retrievalFailures.WithLabelValues(string(reason)).Inc()
}

// CommitBatch records one store write transaction of ops operations that
// took d (kv.Observer).
func (m *Metrics) CommitBatch(ops int, d time.Duration) {
	m.commitBatchSize.Observe(float64(ops))
	m.commitDuration.Observe(d.Seconds())
}

// ObserveRequest records one answered HTTP request by its route template
// ("unmatched" when no route matched) and status (httpapi.RequestObserver).
func (m *Metrics) ObserveRequest(route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.requestDuration.WithLabelValues(route).Observe(d.Seconds())
}

// RateLimited counts a request refused by the named limit; pass it as
// ratelimit.Config.OnLimited.
func (m *Metrics) RateLimited(limit string) { m.rateLimited.WithLabelValues(limit).Inc() }

// LimitExceeded counts a request refused for a size or count limit (a
// kpd.Limit constant).
func (m *Metrics) LimitExceeded(limit string) { m.limitExceeded.WithLabelValues(limit).Inc() }

// WebhookDelivery counts one webhook delivery attempt by outcome; pass it as
// webhook.Dispatcher.Observer.
func (m *Metrics) WebhookDelivery(outcome string) { m.webhookDeliveries.WithLabelValues(outcome).Inc() }

// Swept counts n records of a kind that a sweep deleted or expired.
func (m *Metrics) Swept(kind string, n int) { m.sweepDeleted.WithLabelValues(kind).Add(float64(n)) }

// SweepFailed counts a sweep that failed.
func (m *Metrics) SweepFailed() { m.sweepFailures.Inc() }
