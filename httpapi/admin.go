package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/internal/ctxio"
)

// AdminPrefix starts the path of every admin route.
const AdminPrefix = "/v1/admin/"

// ReasonAdminRoutesOff is the problem's reason of the 404 NotFound that
// every admin path answers on a server without an admin token, so that a
// client can tell it from a 404 of the routes themselves (no such token).
const ReasonAdminRoutesOff = "AdminRoutesOff"

// The response of GET /v1/admin/backup: the snapshot with its exact
// Content-Length, and its SHA-256 (lowercase hex) in
// AdminSnapshotSHA256Header, so that a client can tell a complete, intact
// snapshot from a damaged or partial one.
const (
	AdminBackupPath           = "/v1/admin/backup"
	AdminSnapshotSHA256Header = "Kpd-Snapshot-Sha256"
)

// DefaultAdminBackupTimeout is the default of AdminConfig.BackupTimeout.
const DefaultAdminBackupTimeout = time.Hour

// AdminSnapshotter writes consistent snapshots of the live database;
// *kv.DB implements it.
type AdminSnapshotter interface {
	// WriteSnapshot writes a snapshot to w and returns the bytes written.
	WriteSnapshot(w io.Writer) (int64, error)
}

// AdminConfig is what NewAdmin needs.
type AdminConfig struct {
	// Token is the admin bearer token. Empty turns the admin routes off:
	// they answer 404 NotFound.
	Token string
	// Snapshots is the database that GET /v1/admin/backup copies;
	// required when Token is set.
	Snapshots AdminSnapshotter
	// SpoolDir is where a snapshot is staged before it is sent (it needs
	// room for one copy of the database); "" means os.TempDir().
	SpoolDir string
	// BackupTimeout bounds the sending of one snapshot, in place of the
	// server's write timeout; 0 means DefaultAdminBackupTimeout.
	BackupTimeout time.Duration
	// Logger receives one line per request and every internal error.
	Logger zerolog.Logger
	// Metrics, when set, hears about every answered request, as
	// Config.Metrics does: the admin routes by their templates (e.g.
	// AdminBackupPath), anything else as "unmatched".
	Metrics RequestObserver
	// Stats, when set, serves GET /v1/admin/stats (see AdminStatsPath).
	Stats AdminStatsSource
	// LastBackup, when set, gives the time of the newest backup (zero for
	// none) for GET /v1/admin/stats.
	LastBackup func() time.Time
	// BackupSent, when set, hears the time (by Clock) of every snapshot
	// that GET /v1/admin/backup sent in full: a backup taken through the
	// admin route.
	BackupSent func(time.Time)
	// Tokens, when set, serves the API token routes (see AdminTokensPath):
	// POST creates a token for a DID and answers it once, GET lists the
	// tokens (never their secrets), DELETE .../{id} revokes one.
	Tokens AdminTokenStore
	// Clock gives the creation time of new tokens; nil means time.Now.
	Clock kpd.Clock
}

// NewAdmin returns the handler of the admin routes of SPEC section 5, which
// need `Authorization: Bearer <admin token>` (401 Unauthorized otherwise):
//
//   - GET /v1/admin/backup sends a consistent snapshot of the live database
//     (application/octet-stream, see AdminSnapshotSHA256Header) while the
//     server keeps serving. The snapshot is first written to a temporary
//     file in SpoolDir, so that a slow client never holds the database's
//     read transaction (bbolt cannot grow its memory map, and so commit,
//     while one is open). One backup runs at a time: another request
//     meanwhile is 503 Unavailable. A snapshot that fails is a 500
//     Internal problem; a failure while sending leaves the body short of
//     its Content-Length.
//   - GET /v1/admin/stats (with AdminConfig.Stats) returns the store's
//     totals as JSON: KeyPackages by suite and state, devices, Welcomes,
//     deliveries by state, pool sizes, undelivered events, database size
//     and the newest backup (AdminConfig.LastBackup: a scheduled snapshot,
//     or one this route sent in full).
//   - POST /v1/admin/tokens (with AdminConfig.Tokens) creates an API token
//     for {"did", "label"} and answers 201 with the token, shown only
//     then; GET /v1/admin/tokens[?did=] lists the tokens without their
//     secrets; DELETE /v1/admin/tokens/{id} revokes one (204, or 404
//     NotFound).
//
// Without AdminConfig.Token the admin routes are off: every path answers
// 404 NotFound, saying how to turn them on. Errors are RFC 9457 problem
// documents, as on every other route.
func NewAdmin(cfg AdminConfig) http.Handler {
	s := &server{log: cfg.Logger, metrics: cfg.Metrics, router: newRouter()}
	s.router.NotFoundHandler = http.HandlerFunc(s.notFound)
	s.router.MethodNotAllowedHandler = http.HandlerFunc(s.methodNotAllowed)
	if cfg.Token != "" {
		a := &adminServer{
			server:    s,
			tokenHash: sha256.Sum256([]byte(cfg.Token)),
			snapshots: cfg.Snapshots,
			spoolDir:  cfg.SpoolDir,
			timeout:   cfg.BackupTimeout,
			busy:      make(chan struct{}, 1),
			sent:      cfg.BackupSent,
			clock:     cfg.Clock,
		}
		if a.timeout <= 0 {
			a.timeout = DefaultAdminBackupTimeout
		}
		s.handlePublic(http.MethodGet, AdminBackupPath, a.authorized(a.backup))
		a.registerStats(cfg)
		a.registerTokens(cfg)
	} else {
		s.router.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.writeError(w, r, &kpd.Error{Code: kpd.CodeNotFound, Reason: ReasonAdminRoutesOff,
				Message: "the admin routes are off: start kpd serve with an admin token (--admin-token-file FILE, or KPD_ADMIN_TOKEN)"})
		})
	}
	return s.requestID(s.logRequests(s.recoverPanics(s.checkSegments(s.router))))
}

// adminServer serves the admin routes.
type adminServer struct {
	*server
	tokenHash [sha256.Size]byte
	snapshots AdminSnapshotter
	spoolDir  string
	timeout   time.Duration
	// busy holds a token while a backup runs.
	busy  chan struct{}
	sent  func(time.Time)
	clock kpd.Clock
}

// adminCaller names the admin in request logs.
const adminCaller = "admin"

// authorized wraps an admin route: the request must carry the admin token.
// The token is compared by its SHA-256, in constant time.
func (a *adminServer) authorized(h func(w http.ResponseWriter, r *http.Request) error) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		cred = strings.TrimSpace(cred)
		if !strings.EqualFold(scheme, "Bearer") || cred == "" {
			return kpd.Errorf(kpd.CodeUnauthorized, "admin routes need 'Authorization: Bearer <admin token>'")
		}
		got := sha256.Sum256([]byte(cred))
		if subtle.ConstantTimeCompare(got[:], a.tokenHash[:]) != 1 {
			return kpd.Errorf(kpd.CodeUnauthorized, "wrong admin token")
		}
		infoFrom(r.Context()).caller = adminCaller
		return h(w, r)
	}
}

// adminBackupRetryAfter is the Retry-After, in seconds, of a backup request
// refused because another one runs.
const adminBackupRetryAfter = 30

// backup serves GET /v1/admin/backup.
func (a *adminServer) backup(w http.ResponseWriter, r *http.Request) error {
	select {
	case a.busy <- struct{}{}:
		defer func() { <-a.busy }()
	default:
		return &kpd.Error{Code: kpd.CodeUnavailable, Message: "another backup is being taken", RetryAfter: adminBackupRetryAfter}
	}
	spool, err := os.CreateTemp(a.spoolDir, "kpd-backup-*.tmp")
	if err != nil {
		return err
	}
	// Unlinked at once where the system allows it, so that not even a
	// crash leaves the copy behind.
	if os.Remove(spool.Name()) != nil {
		defer os.Remove(spool.Name())
	}
	defer spool.Close()
	h := sha256.New()
	// Spooling stops when the client goes, or when the server closes the
	// connection at the end of a shutdown.
	size, err := a.snapshots.WriteSnapshot(ctxio.Writer(r.Context(), io.MultiWriter(spool, h)))
	if err != nil {
		return err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	// A large snapshot may take longer than the server's write timeout.
	rc := http.NewResponseController(w)
	if err := rc.SetWriteDeadline(time.Now().Add(a.timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Length", strconv.FormatInt(size, 10))
	hdr.Set("Cache-Control", "no-store")
	hdr.Set(AdminSnapshotSHA256Header, hex.EncodeToString(h.Sum(nil)))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, spool); err != nil {
		// The client sees a body shorter than its Content-Length.
		a.log.Warn().Str("request_id", infoFrom(r.Context()).id).Err(err).Msg("admin backup: sending the snapshot failed")
		return nil
	}
	if a.sent != nil {
		a.sent(a.clock.Now())
	}
	return nil
}
