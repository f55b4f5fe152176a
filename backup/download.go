package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/kpd-dir/kpd"
)

// The admin backup route (see httpapi.NewAdmin) and the header in which it
// sends the snapshot's SHA-256 (lowercase hex).
const (
	backupPath     = "/v1/admin/backup"
	checksumHeader = "Kpd-Snapshot-Sha256"
)

// Timeouts of Download.
const (
	// DownloadTimeout bounds a whole Download, body included.
	DownloadTimeout = time.Hour
	// dialTimeout bounds connecting (and the TLS handshake).
	dialTimeout = 10 * time.Second
	// responseHeaderTimeout bounds the wait for the response to begin.
	responseHeaderTimeout = time.Minute
	// maxProblemBytes bounds the error document read from a failed response.
	maxProblemBytes = 64 << 10
)

// Download fetches a snapshot of a running server's live database through
// GET /v1/admin/backup under baseURL (such as http://127.0.0.1:8080) and
// writes it to w, calling progress (when not nil) with the bytes received
// so far and the snapshot's size (-1 if the server did not say). It returns
// the bytes written. A transfer that ends before its Content-Length, or
// whose SHA-256 differs
// from the one the server announced, is an error (ErrChecksum for the
// latter): only a complete, intact snapshot succeeds. When the server
// refuses, the error is a *kpd.Error with the server's code: Unauthorized
// for a wrong admin token, NotFound when the server has no admin token
// configured, Unavailable while another backup runs.
func Download(ctx context.Context, baseURL, adminToken string, w io.Writer, progress func(done, total int64)) (int64, error) {
	endpoint := strings.TrimSuffix(baseURL, "/") + backupPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return 0, fmt.Errorf("download snapshot: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	client := newHTTPClient()
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download snapshot: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, responseError(endpoint, resp)
	}
	want := resp.Header.Get(checksumHeader)
	if want == "" {
		return 0, fmt.Errorf("download snapshot from %s: the response has no %s header", endpoint, checksumHeader)
	}

	h := sha256.New()
	dst := io.MultiWriter(w, h)
	if progress != nil {
		dst = &progressWriter{w: dst, total: resp.ContentLength, progress: progress}
	}
	n, err := io.Copy(dst, resp.Body)
	if err != nil {
		return n, fmt.Errorf("download snapshot from %s: %w", endpoint, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return n, fmt.Errorf("download snapshot from %s: %w: received SHA-256 %s, the server announced %s", endpoint, ErrChecksum, got, want)
	}
	return n, nil
}

// newHTTPClient returns the client of one Download: bounded connect,
// handshake and first-response waits, and DownloadTimeout overall.
func newHTTPClient() *http.Client {
	return &http.Client{
		Timeout: DownloadTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   dialTimeout,
			ResponseHeaderTimeout: responseHeaderTimeout,
			ForceAttemptHTTP2:     true,
		},
	}
}

// responseError turns a failed response into an error (see ProblemError).
func responseError(endpoint string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxProblemBytes))
	return ProblemError(http.MethodGet, endpoint, resp.Status, body)
}

// ProblemError is the error of an admin request answered with status and
// body: a *kpd.Error with the code and reason of its RFC 9457 problem
// document, if it has one.
func ProblemError(method, endpoint, status string, body []byte) error {
	var p struct {
		Code   kpd.Code `json:"code"`
		Detail string   `json:"detail"`
		Reason string   `json:"reason"`
	}
	if json.Unmarshal(body, &p) == nil && p.Code != "" {
		return &kpd.Error{Code: p.Code, Reason: p.Reason, Message: fmt.Sprintf("%s %s: %s: %s", method, endpoint, status, p.Detail)}
	}
	return fmt.Errorf("%s %s: %s", method, endpoint, status)
}
