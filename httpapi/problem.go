package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/kpd-dir/kpd"
)

// StatusOf returns the HTTP status of an error code: the one mapping from
// codes to statuses. Unknown codes are 500.
func StatusOf(code kpd.Code) int {
	switch code {
	case kpd.CodeBadRequest:
		return http.StatusBadRequest
	case kpd.CodeUnauthorized:
		return http.StatusUnauthorized
	case kpd.CodeForbidden:
		return http.StatusForbidden
	case kpd.CodeNotFound:
		return http.StatusNotFound
	case kpd.CodeConflict, kpd.CodeNoKeyPackages, kpd.CodeExhausted:
		return http.StatusConflict
	case kpd.CodePayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	case kpd.CodeMalformed, kpd.CodeUnsupportedVersion, kpd.CodeUnsupportedCipherSuite,
		kpd.CodeInvalidKeyPackage, kpd.CodeBadSignature, kpd.CodeLifetimeInvalid,
		kpd.CodeIdentityMismatch, kpd.CodeUnknownKeyPackage, kpd.CodeNotClaimedByCaller,
		kpd.CodeAlreadyConsumed, kpd.CodeSuiteMismatch, kpd.CodeQuotaExceeded:
		return http.StatusUnprocessableEntity
	case kpd.CodeRateLimited:
		return http.StatusTooManyRequests
	case kpd.CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// problemContentType is the media type of RFC 9457 problem documents.
const problemContentType = "application/problem+json"

// defaultRetryAfter is the Retry-After, in seconds, of a 429 or 503 whose
// error names none.
const defaultRetryAfter = 5

// problem is an RFC 9457 problem document with kpd's extension members.
// Handlers return one as an error when they need members that kpd.Error
// does not carry (rejected) or a status outside StatusOf (405).
type problem struct {
	Type   string   `json:"type"`
	Title  string   `json:"title"`
	Status int      `json:"status"`
	Detail string   `json:"detail,omitempty"`
	Code   kpd.Code `json:"code"`
	// Reason names the authentication check that failed, on 401, 429 and 503
	// answers of the authenticator, or ReasonAdminRoutesOff.
	Reason string `json:"reason,omitempty"`
	// RequestID lets a client quote the request to an operator.
	RequestID string            `json:"request_id,omitempty"`
	Errors    []kpd.ItemError   `json:"errors,omitempty"`
	Missing   []kpd.Missing     `json:"missing,omitempty"`
	Rejected  []kpd.RejectedRef `json:"rejected,omitempty"`
	// Limit names the size or count limit a 413 or 422 QuotaExceeded
	// breached (kpd.Error.Limit).
	Limit string `json:"limit,omitempty"`
	// retryAfter, in seconds, becomes the Retry-After header.
	retryAfter int
}

func (p *problem) Error() string { return string(p.Code) + ": " + p.Detail }

// problemOf turns err into a problem document. Errors without a code, or
// with one StatusOf does not know, are internal: they are logged with the
// request id and shown as "internal error".
func (s *server) problemOf(r *http.Request, err error) *problem {
	var p problem
	var pe *problem
	var ke *kpd.Error
	switch {
	case errors.As(err, &pe):
		p = *pe
	case StatusOf(kpd.ErrorCode(err)) == http.StatusInternalServerError:
		s.logInternal(r, err)
		p = problem{Status: http.StatusInternalServerError, Code: kpd.CodeInternal, Detail: "internal error"}
	default:
		p = problem{Code: kpd.ErrorCode(err), Detail: kpd.ErrorMessage(err)}
		p.Status = StatusOf(p.Code)
		if errors.As(err, &ke) {
			p.Errors, p.Missing, p.Reason, p.retryAfter, p.Limit = ke.Items, ke.Missing, ke.Reason, ke.RetryAfter, ke.Limit
		}
	}
	if p.Status == 0 {
		p.Status = StatusOf(p.Code)
	}
	if p.retryAfter <= 0 && (p.Status == http.StatusTooManyRequests || p.Status == http.StatusServiceUnavailable) {
		p.retryAfter = defaultRetryAfter
	}
	p.Type = "about:blank"
	p.Title = http.StatusText(p.Status)
	p.RequestID = infoFrom(r.Context()).id
	return &p
}

// writeError writes err as a problem+json response. Unauthorized responses
// carry a WWW-Authenticate challenge, 429 and 503 a Retry-After.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := s.problemOf(r, err)
	if p.Limit != "" && s.metrics != nil {
		s.metrics.LimitExceeded(p.Limit)
	}
	writeProblem(w, p)
}

// writeProblem writes p, whose Type, Title and Status are set, as the
// response. Unauthorized responses carry a WWW-Authenticate challenge,
// those with a retryAfter a Retry-After.
func writeProblem(w http.ResponseWriter, p *problem) {
	h := w.Header()
	if p.Code == kpd.CodeUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="kpd"`)
	}
	if p.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(p.retryAfter))
	}
	body, _ := json.Marshal(p) // cannot fail: strings, ints and slices of them
	h.Set("Content-Type", problemContentType)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	w.Write(append(body, '\n'))
}

// logInternal logs an internal error with the request's id and route.
func (s *server) logInternal(r *http.Request, err error) {
	info := infoFrom(r.Context())
	s.log.Error().Str("request_id", info.id).Str("route", info.route).Err(err).Msg("internal error")
}
