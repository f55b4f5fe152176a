// Package client is a Go client of kpd's HTTP API: one method per route,
// taking a context first and returning the kpd domain types. Failures that
// the server reports come back as *Error, with the stable code of the
// problem document.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/kpd-dir/kpd"
)

// DefaultTimeout bounds each request of a Client made without
// WithHTTPClient; it leaves room for a 60 s long-poll.
const DefaultTimeout = 90 * time.Second

// Client calls one kpd server. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
	cbor  bool
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the Client send its requests with hc.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithCBOR makes the Client send request bodies and ask for responses in
// CBOR instead of JSON.
func WithCBOR() Option { return func(c *Client) { c.cbor = true } }

// New returns a Client of the server at baseURL (e.g.
// "http://127.0.0.1:8080") that authenticates with
// `Authorization: Bearer <token>` (an API token, or a DID on a dev-mode
// server). An empty token sends no Authorization header.
func New(baseURL, token string, opts ...Option) *Client {
	c := &Client{
		base:  strings.TrimRight(baseURL, "/"),
		token: token,
		hc:    &http.Client{Timeout: DefaultTimeout},
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Error is a failure reported by the server: the HTTP status and the
// members of its RFC 9457 problem document.
type Error struct {
	Status int
	// Code is the stable error code; "" if the response was not a kpd
	// problem document (e.g. from a proxy).
	Code kpd.Code
	// Reason names the authentication check that failed (401, 429 and 503
	// answers of the authenticator), e.g. "Expired".
	Reason string
	// Limit names the size or count limit a PayloadTooLarge or
	// QuotaExceeded answer breached (a kpd.Limit constant).
	Limit  string
	Title  string
	Detail string
	// Errors are per-item errors of a batch (publish, claim targets).
	Errors []kpd.ItemError
	// Missing are the targets an all_or_nothing claim could not fill.
	Missing []kpd.Missing
	// Rejected are a posted Welcome's refs that could not be routed.
	Rejected []kpd.RejectedRef
	// RetryAfter is the Retry-After of 429 and 503 responses.
	RetryAfter time.Duration
	// RequestID identifies the request in the server's logs.
	RequestID string
}

// Error formats the error as "kpd: <status> <code>: <detail>".
func (e *Error) Error() string {
	s := fmt.Sprintf("kpd: %d", e.Status)
	if e.Code != "" {
		s += " " + string(e.Code)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	} else if e.Title != "" {
		s += ": " + e.Title
	}
	return s
}

// PublishResponse is the outcome of Publish.
type PublishResponse struct {
	Results   []kpd.PublishResult `json:"results"`
	Inventory *kpd.Inventory      `json:"inventory"`
}

// InventoryResponse is a device's inventory and, when listed, its
// KeyPackages.
type InventoryResponse struct {
	kpd.Inventory
	KeyPackages []kpd.KeyPackageInfo `json:"key_packages"`
}

// TakeResponse is a Welcome that Take returned and acknowledged, and when
// its KeyPackage was consumed.
type TakeResponse struct {
	kpd.PendingWelcome
	ConsumedAt time.Time `json:"consumed_at"`
}

// DeleteResponse is the outcome of DeleteKeyPackages.
type DeleteResponse struct {
	Deleted   int            `json:"deleted"`
	Inventory *kpd.Inventory `json:"inventory"`
}

// ClaimRequest asks for one KeyPackage of CipherSuite per target device.
type ClaimRequest struct {
	CipherSuite uint16            `json:"cipher_suite"`
	Targets     []kpd.ClaimTarget `json:"targets"`
	// ExcludeDevices are devices of the caller's own DID not to claim for.
	ExcludeDevices []string `json:"exclude_devices,omitempty"`
	// AllOrNothing claims nothing unless every target device gets one.
	AllOrNothing bool `json:"all_or_nothing,omitempty"`
}

// ListOptions filter and page Welcomes.
type ListOptions struct {
	// ConvoID keeps only Welcomes of this conversation.
	ConvoID string
	// Limit caps the number returned (0: the server's default).
	Limit int
	// Wait asks the server to wait up to this long (at most 60 s; more is
	// a BadRequest) for a Welcome when there is none. The request then
	// lasts up to Wait: the context's deadline and the HTTP client's
	// Timeout (90 s in the default client) must leave it that long, or
	// the call fails with their error instead of an empty list.
	Wait time.Duration
}

// Publish publishes KeyPackages (MLSMessages or bare KeyPackages) for one of
// the caller's devices. If any is invalid nothing is stored and the *Error
// lists every invalid one in Errors.
func (c *Client) Publish(ctx context.Context, device string, keyPackages [][]byte) (*PublishResponse, error) {
	body := struct {
		KeyPackages [][]byte `json:"key_packages"`
	}{keyPackages}
	var out PublishResponse
	path, err := devicePath(device, "key-packages")
	if err == nil {
		_, err = c.do(ctx, http.MethodPost, path, nil, body, &out)
	}
	return ok(&out, err)
}

// Inventory returns a device's counts and, with list, every KeyPackage it
// has.
func (c *Client) Inventory(ctx context.Context, device string, list bool) (*InventoryResponse, error) {
	var q url.Values
	if list {
		q = url.Values{"list": {"1"}}
	}
	var out InventoryResponse
	path, err := devicePath(device, "key-packages")
	if err == nil {
		_, err = c.do(ctx, http.MethodGet, path, q, nil, &out)
	}
	return ok(&out, err)
}

// DeleteKeyPackages deletes the listed available KeyPackages of a device;
// refs nil deletes every available one, last resorts included.
func (c *Client) DeleteKeyPackages(ctx context.Context, device string, refs []kpd.Ref) (*DeleteResponse, error) {
	var body any
	if refs != nil {
		body = refsBody{refs}
	}
	var out DeleteResponse
	path, err := devicePath(device, "key-packages")
	if err == nil {
		_, err = c.do(ctx, http.MethodDelete, path, nil, body, &out)
	}
	return ok(&out, err)
}

type refsBody struct {
	Refs []kpd.Ref `json:"refs"`
}

// Sync tells the server which of a device's KeyPackages it still holds
// private keys for; the server deletes its other available ones.
func (c *Client) Sync(ctx context.Context, device string, refs []kpd.Ref) (*kpd.SyncResult, error) {
	if refs == nil {
		refs = []kpd.Ref{}
	}
	var out kpd.SyncResult
	path, err := devicePath(device, "key-packages", "sync")
	if err == nil {
		_, err = c.do(ctx, http.MethodPost, path, nil, refsBody{refs}, &out)
	}
	return ok(&out, err)
}

// Devices lists the caller's devices.
func (c *Client) Devices(ctx context.Context) ([]kpd.DeviceInfo, error) {
	var out struct {
		Devices []kpd.DeviceInfo `json:"devices"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/devices", nil, nil, &out)
	return out.Devices, err
}

// DeleteDevice removes one of the caller's devices with its KeyPackages
// and pending Welcomes.
func (c *Client) DeleteDevice(ctx context.Context, device string) error {
	path, err := devicePath(device)
	if err == nil {
		_, err = c.do(ctx, http.MethodDelete, path, nil, nil, nil)
	}
	return err
}

// Claim claims one KeyPackage per target device. When an all_or_nothing
// claim cannot be filled, the *Error has code Conflict and lists Missing.
func (c *Client) Claim(ctx context.Context, req ClaimRequest) (*kpd.ClaimResult, error) {
	var out kpd.ClaimResult
	_, err := c.do(ctx, http.MethodPost, "/v1/key-packages/claim", nil, req, &out)
	return ok(&out, err)
}

// PostWelcome posts a Welcome (MLSMessage or bare) for a conversation.
// Created tells a new Welcome (201) from a repeated post (200). When no
// ref routes, the *Error lists Rejected.
func (c *Client) PostWelcome(ctx context.Context, convoID string, welcome []byte) (*kpd.PostWelcomeResult, error) {
	body := struct {
		ConvoID string `json:"convo_id"`
		Welcome []byte `json:"welcome"`
	}{convoID, welcome}
	var out kpd.PostWelcomeResult
	status, err := c.do(ctx, http.MethodPost, "/v1/welcomes", nil, body, &out)
	out.Created = status == http.StatusCreated
	return ok(&out, err)
}

// WelcomeStatus returns the delivery status of a Welcome the caller posted.
func (c *Client) WelcomeStatus(ctx context.Context, welcomeID string) (*kpd.WelcomeStatus, error) {
	var out kpd.WelcomeStatus
	_, err := c.do(ctx, http.MethodGet, "/v1/welcomes/"+url.PathEscape(welcomeID), nil, nil, &out)
	return ok(&out, err)
}

// Welcomes lists a device's pending Welcomes, oldest first.
func (c *Client) Welcomes(ctx context.Context, device string, opts ListOptions) ([]kpd.PendingWelcome, error) {
	q := url.Values{}
	if opts.ConvoID != "" {
		q.Set("convo_id", opts.ConvoID)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Wait > 0 {
		q.Set("wait", opts.Wait.String())
	}
	var out struct {
		Welcomes []kpd.PendingWelcome `json:"welcomes"`
	}
	path, err := devicePath(device, "welcomes")
	if err == nil {
		_, err = c.do(ctx, http.MethodGet, path, q, nil, &out)
	}
	return out.Welcomes, err
}

// Ack acknowledges a Welcome delivered to a device, consuming its
// KeyPackage. Acknowledging twice is harmless.
func (c *Client) Ack(ctx context.Context, device, welcomeID string) (*kpd.AckResult, error) {
	var out kpd.AckResult
	path, err := devicePath(device, "welcomes", welcomeID, "ack")
	if err == nil {
		_, err = c.do(ctx, http.MethodPost, path, nil, nil, &out)
	}
	return ok(&out, err)
}

// Reject rejects a Welcome delivered to a device with a reason
// (kpd.ReasonNoMatchingKeyPackage, kpd.ReasonInvalidWelcome or
// kpd.ReasonOther) that its sender sees.
func (c *Client) Reject(ctx context.Context, device, welcomeID string, reason kpd.Code, detail string) (*kpd.AckResult, error) {
	body := struct {
		Reason kpd.Code `json:"reason"`
		Detail string   `json:"detail,omitempty"`
	}{reason, detail}
	var out kpd.AckResult
	path, err := devicePath(device, "welcomes", welcomeID, "reject")
	if err == nil {
		_, err = c.do(ctx, http.MethodPost, path, nil, body, &out)
	}
	return ok(&out, err)
}

// Take returns a device's oldest pending Welcome (of convoID, if set) and
// acknowledges it at once. The *Error has code NotFound when there is none.
func (c *Client) Take(ctx context.Context, device, convoID string) (*TakeResponse, error) {
	var q url.Values
	if convoID != "" {
		q = url.Values{"convo_id": {convoID}}
	}
	var out TakeResponse
	path, err := devicePath(device, "welcomes", "take")
	if err == nil {
		_, err = c.do(ctx, http.MethodPost, path, q, nil, &out)
	}
	return ok(&out, err)
}

// Health checks liveness (GET /healthz).
func (c *Client) Health(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
	return err
}

// Ready checks readiness (GET /readyz); a server that is not ready answers
// with an *Error of code Unavailable.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil, nil)
	return err
}

// devicePath returns /v1/devices/<device>/<segments...>, escaped. A device
// name that kpd.ValidDevice refuses is a *kpd.Error of code BadRequest,
// without a request: the server would refuse it too.
func devicePath(device string, segments ...string) (string, error) {
	if !kpd.ValidDevice(device) {
		return "", kpd.Errorf(kpd.CodeBadRequest, "device name %q: want 1-64 characters of A-Z a-z 0-9 . _ ~ -, not . or ..", device)
	}
	var b strings.Builder
	b.WriteString("/v1/devices/")
	b.WriteString(url.PathEscape(device))
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String(), nil
}

// ok returns out, or nil with err when err is set.
func ok[T any](out *T, err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return out, nil
}

const (
	jsonType    = "application/json"
	cborType    = "application/cbor"
	problemType = "application/problem+json"
)

// do sends one request and decodes a 2xx response into out (if not nil);
// it returns the status. Other responses become *Error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) (int, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := c.marshal(in)
		if err != nil {
			return 0, fmt.Errorf("kpd: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", c.mediaType())
	}
	req.Header.Set("Accept", c.mediaType())
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("kpd: read response: %w", err)
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, responseError(resp, data)
	}
	if out == nil || len(data) == 0 {
		return resp.StatusCode, nil
	}
	if err := unmarshal(resp.Header.Get("Content-Type"), data, out); err != nil {
		return resp.StatusCode, fmt.Errorf("kpd: decode response: %w", err)
	}
	return resp.StatusCode, nil
}

func (c *Client) mediaType() string {
	if c.cbor {
		return cborType
	}
	return jsonType
}

// cborEnc sends times as RFC 3339 text, like the server.
var cborEnc, _ = cbor.EncOptions{Time: cbor.TimeRFC3339NanoUTC}.EncMode()

func (c *Client) marshal(v any) ([]byte, error) {
	if c.cbor {
		return cborEnc.Marshal(v)
	}
	return json.Marshal(v)
}

// unmarshal decodes a response body by its Content-Type.
func unmarshal(contentType string, data []byte, out any) error {
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == cborType {
		return cbor.Unmarshal(data, out)
	}
	return json.Unmarshal(data, out)
}

// responseError turns a non-2xx response into an *Error, reading its
// problem document when it has one.
func responseError(resp *http.Response, data []byte) *Error {
	e := &Error{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode), RequestID: resp.Header.Get("X-Request-Id")}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs >= 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != problemType {
		return e
	}
	var p struct {
		Title     string            `json:"title"`
		Detail    string            `json:"detail"`
		Code      kpd.Code          `json:"code"`
		Reason    string            `json:"reason"`
		Limit     string            `json:"limit"`
		RequestID string            `json:"request_id"`
		Errors    []kpd.ItemError   `json:"errors"`
		Missing   []kpd.Missing     `json:"missing"`
		Rejected  []kpd.RejectedRef `json:"rejected"`
	}
	if json.Unmarshal(data, &p) != nil {
		return e
	}
	e.Code, e.Reason, e.Detail, e.Limit = p.Code, p.Reason, p.Detail, p.Limit
	e.Errors, e.Missing, e.Rejected = p.Errors, p.Missing, p.Rejected
	if p.Title != "" {
		e.Title = p.Title
	}
	if p.RequestID != "" {
		e.RequestID = p.RequestID
	}
	return e
}
