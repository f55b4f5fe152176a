package metrics

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kpd-dir/kpd"
)

// Descriptions of the metrics read from the store.
var (
	descAvailable = statsDesc("key_packages_available",
		"Available regular KeyPackages, by cipher suite (last resorts not included).", "suite")
	descClaimed = statsDesc("key_packages_claimed",
		"Claimed KeyPackages awaiting their Welcome, by cipher suite.", "suite")
	descLastResort = statsDesc("key_packages_last_resort",
		"Available last-resort KeyPackages, by cipher suite.", "suite")
	descPoolSizes = statsDesc("device_key_packages",
		"Distribution of available regular KeyPackages per device and cipher suite (pool sizes).")
	descDevices       = statsDesc("devices", "Devices known to the store.")
	descWelcomes      = statsDesc("welcomes", "Welcomes stored.")
	descDeliveries    = statsDesc("welcome_deliveries_by_state", "Welcome deliveries stored, by state.", "state")
	descPendingEvents = statsDesc("webhook_pending_events", "Outbox events not yet delivered by webhook.")
	descDBSize        = statsDesc("db_size_bytes", "Size of the database file.")
	descDroppedEvents = statsDesc("webhook_dropped_events_total", "Outbox events discarded undelivered because the outbox was full.")
	statsDescriptions = []*prometheus.Desc{descAvailable, descClaimed, descLastResort, descPoolSizes,
		descDevices, descWelcomes, descDeliveries, descPendingEvents, descDBSize}
	deliveryStates = []kpd.DeliveryState{kpd.DeliveryPending, kpd.DeliveryAcked, kpd.DeliveryRejected, kpd.DeliveryExpired}
)

func statsDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

// droppedEventsSource is a store that counts the outbox events it
// discarded; *kv.DB is one.
type droppedEventsSource interface {
	DroppedEvents(ctx context.Context) (int64, error)
}

// statsCollector reads the store's totals on every scrape.
type statsCollector struct {
	src     StatsSource
	suites  *atomic.Pointer[[]uint16] // configured suites, shown at zero when they have nothing
	dropped droppedEventsSource       // nil when src does not count them
	timeout time.Duration
}

func newStatsCollector(src StatsSource, timeout time.Duration, suites *atomic.Pointer[[]uint16]) *statsCollector {
	dropped, _ := src.(droppedEventsSource)
	return &statsCollector{src: src, suites: suites, dropped: dropped, timeout: timeout}
}

// Describe implements prometheus.Collector.
func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range statsDescriptions {
		ch <- d
	}
	if c.dropped != nil {
		ch <- descDroppedEvents
	}
}

// Collect implements prometheus.Collector. When Stats fails, it reports the
// error (the scrape handler logs it) and no gauge.
func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	st, err := c.src.Stats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descDBSize, fmt.Errorf("store stats: %w", err))
		return
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	var available int64
	seen := make(map[uint16]bool, len(st.Suites))
	for _, s := range st.Suites {
		suite := suiteLabel(s.CipherSuite)
		gauge(descAvailable, s.Available, suite)
		gauge(descClaimed, s.Claimed, suite)
		gauge(descLastResort, s.LastResort, suite)
		available += s.Available
		seen[s.CipherSuite] = true
	}
	if configured := c.suites.Load(); configured != nil {
		for _, s := range *configured {
			if !seen[s] {
				seen[s] = true
				suite := suiteLabel(s)
				gauge(descAvailable, 0, suite)
				gauge(descClaimed, 0, suite)
				gauge(descLastResort, 0, suite)
			}
		}
	}
	ch <- poolSizeHistogram(st.PoolSizes, available)
	gauge(descDevices, st.Devices)
	gauge(descWelcomes, st.Welcomes)
	for _, state := range deliveryStates {
		gauge(descDeliveries, st.Deliveries[state], string(state))
	}
	gauge(descPendingEvents, st.PendingEvents)
	gauge(descDBSize, st.SizeBytes)
	if c.dropped != nil {
		n, err := c.dropped.DroppedEvents(ctx)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(descDroppedEvents, fmt.Errorf("store dropped events: %w", err))
			return
		}
		ch <- prometheus.MustNewConstMetric(descDroppedEvents, prometheus.CounterValue, float64(n))
	}
}

// poolSizeHistogram turns Stats.PoolSizes (a count per bucket of
// kpd.PoolSizeBounds, the last entry for larger pools) into a Prometheus
// histogram, whose buckets are cumulative. Its sum, the total of all pool
// sizes, is the number of available regular KeyPackages.
func poolSizeHistogram(sizes []int64, available int64) prometheus.Metric {
	buckets := make(map[float64]uint64, len(kpd.PoolSizeBounds))
	var count uint64
	for i, n := range sizes {
		count += uint64(max(n, 0))
		if i < len(kpd.PoolSizeBounds) {
			buckets[float64(kpd.PoolSizeBounds[i])] = count
		}
	}
	for _, b := range kpd.PoolSizeBounds[min(len(sizes), len(kpd.PoolSizeBounds)):] {
		buckets[float64(b)] = count
	}
	return prometheus.MustNewConstHistogram(descPoolSizes, count, float64(available), buckets)
}
