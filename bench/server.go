package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
)

// ServerConfig configures an in-process kpd.
type ServerConfig struct {
	// Path is the bbolt database file (created if missing).
	Path string
	// Clock is injected into the store and validation; nil means time.Now.
	Clock kpd.Clock
	// TokenAuth authenticates callers with API tokens stored in the
	// database (as kpd serve --auth token) instead of dev authentication.
	TokenAuth bool
	// NoSync skips fsync after commits (benchmark diagnostics only).
	NoSync bool
	// Logger receives the request log; nil means request lines are
	// formatted (as kpd serve does) and then discarded.
	Logger *zerolog.Logger
	// Observer hears about the store's commits and changes (kv.Options);
	// nil means none.
	Observer kv.Observer
}

// Server is kpd running inside this process: the bbolt store on a file
// (fsync on every commit, as in production, unless NoSync) and the HTTP API
// with dev authentication (Bearer <did> is the caller; or token
// authentication), without rate limits, on 127.0.0.1 with a free port.
type Server struct {
	// URL is the base URL, http://127.0.0.1:PORT.
	URL string
	// DB is the store, for direct writes (preloading) and verification.
	DB  *kv.DB
	srv *http.Server
}

// StartServer opens the database and starts serving. It returns kv.Open's
// error (wrapping kv.ErrInUse when another process holds the file) or the
// listener's. Close stops the server.
func StartServer(cfg ServerConfig) (*Server, error) {
	db, err := kv.Open(cfg.Path, &kv.Options{Clock: cfg.Clock, NoSync: cfg.NoSync, Observer: cfg.Observer})
	if err != nil {
		return nil, err
	}
	logger := zerolog.New(io.Discard).With().Timestamp().Logger()
	if cfg.Logger != nil {
		logger = *cfg.Logger
	}
	authn := auth.NewDevAuth()
	if cfg.TokenAuth {
		authn = auth.NewTokenAuth(db)
	}
	handler := httpapi.New(httpapi.Config{
		Store:    db,
		Auth:     authn,
		Registry: mls.NewRegistry(),
		Policy: httpapi.Policy{
			MaxLifetime: mls.DefaultMaxLifetime,
			ClockSkew:   mls.DefaultClockSkew,
		},
		Clock:  cfg.Clock,
		Logger: logger,
		Ready:  db.Ready,
	})
	url, srv, err := listen(handler)
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	return &Server{URL: url, DB: db, srv: srv}, nil
}

// Close stops serving (waiting for in-flight requests) and closes the
// database.
func (s *Server) Close() error {
	return errors.Join(shutdown(s.srv), s.DB.Close())
}

// listen serves h on 127.0.0.1 with a free port, with the HTTP server
// settings of kpd serve, and returns the base URL.
func listen(h http.Handler) (string, *http.Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	srv := httpapi.NewServer(h)
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed once shut down
	return "http://" + ln.Addr().String(), srv, nil
}

func shutdown(srv *http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// noopBody is what the noop server answers: an empty claim result, so the
// same client call decodes it.
var noopBody = []byte(`{"key_packages":[],"missing":[]}` + "\n")

// noopHandler reads the request body and answers a fixed small JSON
// document: the floor of what any HTTP API can do on the same stack.
func noopHandler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(noopBody)
}

// startNoopServer serves noopHandler like StartServer serves kpd.
func startNoopServer() (string, func() error, error) {
	url, srv, err := listen(http.HandlerFunc(noopHandler))
	if err != nil {
		return "", nil, err
	}
	return url, func() error { return shutdown(srv) }, nil
}
