package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/kpd-dir/kpd"
)

// AdminStatsPath is the route of the store's totals.
const AdminStatsPath = "/v1/admin/stats"

// AdminStatsSource reports the store's totals; *kv.DB implements it.
type AdminStatsSource interface {
	Stats(ctx context.Context) (kpd.Stats, error)
}

// statsResponse is the body of GET /v1/admin/stats.
type statsResponse struct {
	KeyPackages keyPackageStats `json:"key_packages"`
	Devices     int64           `json:"devices"`
	Welcomes    int64           `json:"welcomes"`
	// Deliveries counts Welcome deliveries by state.
	Deliveries    map[kpd.DeliveryState]int64 `json:"deliveries"`
	PoolSizes     []poolSizeBucket            `json:"pool_sizes"`
	PendingEvents int64                       `json:"pending_events"`
	DBSizeBytes   int64                       `json:"db_size_bytes"`
	// LastBackup is the time of the newest backup: a scheduled snapshot,
	// or one GET /v1/admin/backup sent in full; null when there is none.
	LastBackup *time.Time `json:"last_backup"`
}

type keyPackageStats struct {
	Suites []kpd.SuiteStats `json:"suites"`
}

// poolSizeBucket counts the (device, suite) pools holding at most AtMost
// available regular KeyPackages (and more than the previous bucket's
// bound); AtMost is null for the pools larger than the last bound.
type poolSizeBucket struct {
	AtMost *int  `json:"at_most"`
	Pools  int64 `json:"pools"`
}

// registerStats serves GET /v1/admin/stats when cfg has a Stats source.
func (a *adminServer) registerStats(cfg AdminConfig) {
	if cfg.Stats == nil {
		return
	}
	a.handlePublic(http.MethodGet, AdminStatsPath, a.authorized(func(w http.ResponseWriter, r *http.Request) error {
		st, err := cfg.Stats.Stats(r.Context())
		if err != nil {
			return err
		}
		resp := statsResponse{
			KeyPackages:   keyPackageStats{Suites: nonNil(st.Suites)},
			Devices:       st.Devices,
			Welcomes:      st.Welcomes,
			Deliveries:    st.Deliveries,
			PoolSizes:     poolSizeBuckets(st.PoolSizes),
			PendingEvents: st.PendingEvents,
			DBSizeBytes:   st.SizeBytes,
		}
		if cfg.LastBackup != nil {
			if t := cfg.LastBackup(); !t.IsZero() {
				resp.LastBackup = &t
			}
		}
		return a.respond(w, r, http.StatusOK, resp)
	}))
}

// poolSizeBuckets labels Stats.PoolSizes with kpd.PoolSizeBounds.
func poolSizeBuckets(sizes []int64) []poolSizeBucket {
	out := make([]poolSizeBucket, len(sizes))
	for i, n := range sizes {
		out[i].Pools = n
		if i < len(kpd.PoolSizeBounds) {
			out[i].AtMost = &kpd.PoolSizeBounds[i]
		}
	}
	return out
}
