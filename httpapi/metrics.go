package httpapi

import "net/http"

// MetricsPath is where Config.MetricsHandler is served.
const MetricsPath = "/metrics"

// registerMetrics serves h at GET /metrics without authentication; nothing
// when h is nil.
func (s *server) registerMetrics(h http.Handler) {
	if h == nil {
		return
	}
	s.handlePublic(http.MethodGet, MetricsPath, func(w http.ResponseWriter, r *http.Request) error {
		h.ServeHTTP(w, r)
		return nil
	})
}
