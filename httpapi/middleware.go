package httpapi

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"time"
)

// requestInfo is what the middleware and the route wrappers learn about a
// request, for its log line.
type requestInfo struct {
	id     string
	route  string // the route template; "" when no route matched
	caller string // the authenticated DID, "" before (or without) authentication
}

type infoKey struct{}

// infoFrom returns the request's info, or an empty one for a context
// that the middleware did not prepare.
func infoFrom(ctx context.Context) *requestInfo {
	if info, ok := ctx.Value(infoKey{}).(*requestInfo); ok {
		return info
	}
	return &requestInfo{}
}

// requestIDHeader carries the request id in both directions.
const requestIDHeader = "X-Request-Id"

// requestID gives every request an id: a sane incoming X-Request-Id (a
// proxy's), or a new random one. The response echoes it.
func (s *server) requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(requestIDHeader)
		if !validRequestID(id) {
			id = rand.Text()
		}
		w.Header().Set(requestIDHeader, id)
		ctx := context.WithValue(r.Context(), infoKey{}, &requestInfo{id: id})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// validRequestID accepts 1-128 characters of [A-Za-z0-9._~:-], so that an
// incoming id can neither forge log fields nor grow without bound.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == '~' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// probeRoutes are polled by monitoring: their successful requests are
// logged at debug level, so that scrapes and health checks do not fill
// the log at info level.
var probeRoutes = map[string]bool{"/healthz": true, "/readyz": true, MetricsPath: true}

// logRequests writes one log line per request: request id, method, route
// template (never the raw path, which names devices), status, latency,
// caller DID and bytes in and out. It never logs bodies or headers. It
// also reports the request to Config.Metrics. Lines are at info level,
// but at debug level for successful requests of probeRoutes.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		body := &countingReader{ReadCloser: r.Body}
		r.Body = body
		next.ServeHTTP(rec, r)
		info := infoFrom(r.Context())
		route := info.route
		if route == "" {
			route = "unmatched"
		}
		elapsed := time.Since(start)
		if s.metrics != nil {
			s.metrics.ObserveRequest(route, rec.statusCode(), elapsed)
		}
		line := s.log.Info()
		if probeRoutes[route] && rec.statusCode() < 400 {
			line = s.log.Debug()
		}
		line.
			Str("request_id", info.id).
			Str("method", r.Method).
			Str("route", route).
			Int("status", rec.statusCode()).
			Float64("latency_ms", float64(elapsed.Microseconds())/1000).
			Str("did", info.caller).
			Int64("bytes_in", body.n).
			Int64("bytes", rec.bytes).
			Msg("request")
	})
}

// recoverPanics turns a panicking handler into a 500 "internal error"
// (logged with the request id and stack) instead of a dropped connection.
func (s *server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			err := fmt.Errorf("panic: %v\n%s", v, debug.Stack())
			if rec, ok := w.(*recorder); ok && rec.status != 0 {
				// The response has begun: all that is left is to log.
				s.logInternal(r, err)
				return
			}
			s.writeError(w, r, err)
		}()
		next.ServeHTTP(w, r)
	})
}

// limitBody caps request bodies at Limits.MaxBodyBytes; reading past it
// fails with an *http.MaxBytesError, which the codec reports as
// PayloadTooLarge.
func (s *server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, s.limits.MaxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

// recorder remembers the status and size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	n, err := rec.ResponseWriter.Write(b)
	rec.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// statusCode is the status sent, 200 when the handler wrote nothing.
func (rec *recorder) statusCode() int {
	if rec.status == 0 {
		return http.StatusOK
	}
	return rec.status
}

// countingReader counts the bytes read from a request body.
type countingReader struct {
	io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	return n, err
}
