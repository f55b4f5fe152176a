package httpapi

import (
	"net/http"

	"github.com/kpd-dir/kpd"
)

// registerHealth registers the unauthenticated probes.
func (s *server) registerHealth() {
	s.handlePublic(http.MethodGet, "/healthz", s.healthz)
	s.handlePublic(http.MethodGet, "/readyz", s.readyz)
}

// statusResponse is the body of the probes.
type statusResponse struct {
	Status string `json:"status"`
}

// healthz is liveness: the process serves HTTP.
func (s *server) healthz(w http.ResponseWriter, r *http.Request) error {
	return s.respond(w, r, http.StatusOK, statusResponse{Status: "ok"})
}

// readyz is readiness: 200 when Config.Ready succeeds, else 503
// Unavailable with Retry-After. The reason is logged, not shown.
func (s *server) readyz(w http.ResponseWriter, r *http.Request) error {
	if s.ready != nil {
		if err := s.ready(r.Context()); err != nil {
			s.log.Warn().Str("request_id", infoFrom(r.Context()).id).Err(err).Msg("not ready")
			return kpd.Errorf(kpd.CodeUnavailable, "not ready")
		}
	}
	return s.respond(w, r, http.StatusOK, statusResponse{Status: "ready"})
}
