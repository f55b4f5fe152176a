package httpapi

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/kpd-dir/kpd"
)

// registerWelcomes registers the routes of Welcomes: posting and status
// for senders, listing, ack, reject and take for recipient devices.
func (s *server) registerWelcomes() {
	const device = "/v1/devices/{device}/welcomes"
	s.handle(http.MethodPost, "/v1/welcomes", kpd.OpPostWelcome, s.postWelcome)
	s.handle(http.MethodGet, "/v1/welcomes/{welcome_id}", kpd.OpGetWelcomeStatus, s.welcomeStatus)
	s.handle(http.MethodGet, device, kpd.OpListWelcomes, s.listWelcomes)
	s.handle(http.MethodPost, device+"/take", kpd.OpTakeWelcome, s.takeWelcome)
	s.handle(http.MethodPost, device+"/{welcome_id}/ack", kpd.OpAckWelcome, s.ackWelcome)
	s.handle(http.MethodPost, device+"/{welcome_id}/reject", kpd.OpRejectWelcome, s.rejectWelcome)
}

type postWelcomeRequest struct {
	ConvoID string     `json:"convo_id"`
	Welcome byteString `json:"welcome"`
}

// postWelcome parses a Welcome and routes it to the devices whose
// KeyPackages it names: 201 when new, 200 with the stored result when the
// sender posted it before, 422 with `rejected` when no ref routes.
func (s *server) postWelcome(w http.ResponseWriter, r *request) error {
	var req postWelcomeRequest
	if err := decode(r.Request, &req); err != nil {
		return err
	}
	if !kpd.ValidConvoID(req.ConvoID) {
		return kpd.Errorf(kpd.CodeBadRequest, "convo_id must be 1-%d printable ASCII characters", kpd.MaxConvoIDLength)
	}
	switch n := len(req.Welcome); {
	case n == 0:
		return kpd.Errorf(kpd.CodeBadRequest, "welcome is required")
	case n > s.limits.MaxWelcomeBytes:
		return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitWelcomeSize,
			Message: fmt.Sprintf("Welcome of %d bytes; at most %d", n, s.limits.MaxWelcomeBytes)}
	}
	wel, suite, err := s.registry.ValidateWelcome(req.Welcome)
	if err != nil {
		return err
	}
	members := wel.NewMembers()
	if n := len(members); n > s.limits.MaxWelcomeMembers {
		return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitWelcomeMembers,
			Message: fmt.Sprintf("a Welcome for %d new members; at most %d", n, s.limits.MaxWelcomeMembers)}
	}
	refs := make([]kpd.Ref, len(members))
	for i, m := range members {
		refs[i] = kpd.RefOf(m)
	}
	res, err := s.store.PostWelcome(r.Context(), kpd.Welcome{
		ID:          kpd.WelcomeID(wel.Raw),
		ConvoID:     req.ConvoID,
		Sender:      r.caller,
		CipherSuite: uint16(suite.ID),
		Data:        req.Welcome,
		Refs:        refs,
	})
	if err != nil {
		return err
	}
	res.Recipients, res.Rejected = nonNil(res.Recipients), nonNil(res.Rejected)
	if len(res.Recipients) == 0 {
		code := kpd.CodeUnknownKeyPackage
		if len(res.Rejected) > 0 {
			code = res.Rejected[0].Reason
		}
		return &problem{
			Code:     code,
			Detail:   fmt.Sprintf("none of the Welcome's %d new_member refs can be routed; nothing was stored", len(refs)),
			Rejected: res.Rejected,
		}
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	return s.respond(w, r.Request, status, res)
}

// welcomeStatus shows a Welcome's deliveries to its sender; anyone else
// gets 404 NotFound, as for a Welcome that does not exist.
func (s *server) welcomeStatus(w http.ResponseWriter, r *request) error {
	st, err := s.store.WelcomeStatus(r.Context(), r.caller, r.welcomeID)
	if err != nil {
		return err
	}
	st.Recipients = nonNil(st.Recipients)
	return s.respond(w, r.Request, http.StatusOK, st)
}

// maxWait is the longest long-poll a listing may ask for.
const maxWait = 60 * time.Second

type welcomesResponse struct {
	Welcomes []kpd.PendingWelcome `json:"welcomes"`
}

// listWelcomes lists the device's pending Welcomes, oldest first.
// ?convo_id= filters, ?limit= pages (1 to MaxListWelcomes) and ?wait= (a
// Go duration or seconds, at most 60 s) long-polls: with nothing pending,
// the answer waits until a Welcome for the device arrives or the wait ends
// (see pendingWelcomes).
func (s *server) listWelcomes(w http.ResponseWriter, r *request) error {
	q := r.URL.Query()
	convoID, err := convoParam(r)
	if err != nil {
		return err
	}
	limit := s.limits.MaxListWelcomes
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > s.limits.MaxListWelcomes {
			return kpd.Errorf(kpd.CodeBadRequest, "limit must be an integer from 1 to %d", s.limits.MaxListWelcomes)
		}
		limit = n
	}
	wait, err := parseWait(q.Get("wait"))
	if err != nil {
		return err
	}
	list, err := s.pendingWelcomes(r, kpd.ListWelcomesOptions{ConvoID: convoID, Limit: limit}, wait)
	if err != nil {
		return err
	}
	return s.respond(w, r.Request, http.StatusOK, welcomesResponse{Welcomes: nonNil(list)})
}

// parseWait parses a long-poll duration: a Go duration ("30s") or a number
// of seconds, from 0 to maxWait; "" is 0 (no waiting).
func parseWait(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, serr := strconv.ParseFloat(v, 64)
		if serr != nil || !(secs >= 0 && secs <= maxWait.Seconds()) {
			return 0, kpd.Errorf(kpd.CodeBadRequest, "wait must be a duration (30s) or a number of seconds, at most %s", maxWait)
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	if d < 0 || d > maxWait {
		return 0, kpd.Errorf(kpd.CodeBadRequest, "wait must be from 0 to %s", maxWait)
	}
	return d, nil
}

// convoParam returns the optional ?convo_id= filter.
func convoParam(r *request) (string, error) {
	v := r.URL.Query().Get("convo_id")
	if v != "" && !kpd.ValidConvoID(v) {
		return "", kpd.Errorf(kpd.CodeBadRequest, "convo_id must be 1-%d printable ASCII characters", kpd.MaxConvoIDLength)
	}
	return v, nil
}

// ackWelcome acknowledges a delivery and consumes its KeyPackage;
// idempotent.
func (s *server) ackWelcome(w http.ResponseWriter, r *request) error {
	res, err := s.store.Ack(r.Context(), r.caller, r.device, r.welcomeID)
	if err != nil {
		return err
	}
	return s.respond(w, r.Request, http.StatusOK, res)
}

type rejectRequest struct {
	Reason kpd.Code `json:"reason"`
	Detail string   `json:"detail"`
}

// maxRejectDetail caps the free-text detail of a rejection, which the
// sender sees in the Welcome's status.
const maxRejectDetail = 1024

// rejectWelcome marks a delivery rejected with a reason and consumes its
// KeyPackage.
func (s *server) rejectWelcome(w http.ResponseWriter, r *request) error {
	var req rejectRequest
	if err := decode(r.Request, &req); err != nil {
		return err
	}
	switch req.Reason {
	case kpd.ReasonNoMatchingKeyPackage, kpd.ReasonInvalidWelcome, kpd.ReasonOther:
	default:
		return kpd.Errorf(kpd.CodeBadRequest, "reason must be %s, %s or %s",
			kpd.ReasonNoMatchingKeyPackage, kpd.ReasonInvalidWelcome, kpd.ReasonOther)
	}
	if len(req.Detail) > maxRejectDetail {
		return kpd.Errorf(kpd.CodeBadRequest, "detail is longer than %d bytes", maxRejectDetail)
	}
	res, err := s.store.Reject(r.Context(), r.caller, r.device, r.welcomeID, req.Reason, req.Detail)
	if err != nil {
		return err
	}
	return s.respond(w, r.Request, http.StatusOK, res)
}

// takeResponse is the taken Welcome and when its KeyPackage was consumed.
type takeResponse struct {
	kpd.PendingWelcome
	ConsumedAt time.Time `json:"consumed_at"`
}

// takeWelcome returns the device's oldest pending Welcome (of ?convo_id=)
// and acknowledges it in the same transaction; 404 NotFound if none.
func (s *server) takeWelcome(w http.ResponseWriter, r *request) error {
	convoID, err := convoParam(r)
	if err != nil {
		return err
	}
	pw, ack, err := s.store.Take(r.Context(), r.caller, r.device, convoID)
	if err != nil {
		return err
	}
	return s.respond(w, r.Request, http.StatusOK, takeResponse{PendingWelcome: *pw, ConsumedAt: ack.ConsumedAt})
}
