package httpapi

import (
	"fmt"
	"net/http"

	"github.com/kpd-dir/kpd"
)

// registerClaims registers the claim route.
func (s *server) registerClaims() {
	s.handle(http.MethodPost, "/v1/key-packages/claim", kpd.OpClaimKeyPackages, s.claim)
}

type claimRequest struct {
	CipherSuite    *suiteParam       `json:"cipher_suite"`
	Targets        []kpd.ClaimTarget `json:"targets"`
	ExcludeDevices []string          `json:"exclude_devices"`
	AllOrNothing   bool              `json:"all_or_nothing"`
}

// claim hands out one KeyPackage per target device in one transaction.
// With all_or_nothing and a target left without one, nothing is claimed
// and the answer is 409 Conflict with `missing`.
func (s *server) claim(w http.ResponseWriter, r *request) error {
	var req claimRequest
	if err := decode(r.Request, &req); err != nil {
		return err
	}
	suite, err := s.suite(req.CipherSuite)
	if err != nil {
		return err
	}
	if err := s.checkTargets(req.Targets); err != nil {
		return err
	}
	if n := len(req.ExcludeDevices); n > s.limits.MaxClaimDevices {
		return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitClaimDevices,
			Message: fmt.Sprintf("exclude_devices names %d devices; at most %d", n, s.limits.MaxClaimDevices)}
	}
	for i, d := range req.ExcludeDevices {
		if !kpd.ValidDevice(d) {
			return kpd.Errorf(kpd.CodeBadRequest, "exclude_devices[%d] is not a device name", i)
		}
	}
	if s.rates != nil {
		dids := make([]string, len(req.Targets))
		for i, t := range req.Targets {
			dids[i] = t.DID
		}
		if err := s.rates.Claim(r.caller, dids); err != nil {
			return err
		}
	}
	res, err := s.store.Claim(r.Context(), kpd.ClaimRequest{
		Claimer:        r.caller,
		CipherSuite:    uint16(suite.ID),
		Targets:        req.Targets,
		ExcludeDevices: req.ExcludeDevices,
		AllOrNothing:   req.AllOrNothing,
	})
	if err != nil {
		return err
	}
	res.KeyPackages, res.Missing = nonNil(res.KeyPackages), nonNil(res.Missing)
	return s.respond(w, r.Request, http.StatusOK, res)
}

// checkTargets checks the number of targets (1 to MaxClaimTargets) and of
// each target's devices (at most MaxClaimDevices), more being
// PayloadTooLarge, then each target: a valid DID listed once, valid device
// names. Invalid targets are BadRequest with every one in `errors`.
func (s *server) checkTargets(targets []kpd.ClaimTarget) error {
	switch n := len(targets); {
	case n == 0:
		return kpd.Errorf(kpd.CodeBadRequest, "targets is empty")
	case n > s.limits.MaxClaimTargets:
		return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitClaimTargets,
			Message: fmt.Sprintf("%d targets in one claim; at most %d", n, s.limits.MaxClaimTargets)}
	}
	for i, t := range targets {
		if n := len(t.Devices); n > s.limits.MaxClaimDevices {
			return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitClaimDevices,
				Message: fmt.Sprintf("targets[%d] names %d devices; at most %d", i, n, s.limits.MaxClaimDevices)}
		}
	}
	seen := make(map[string]bool, len(targets))
	var items []kpd.ItemError
	for i, t := range targets {
		if detail := targetProblem(t, seen); detail != "" {
			items = append(items, kpd.ItemError{Index: i, Code: kpd.CodeBadRequest, Detail: detail})
		}
		seen[t.DID] = true
	}
	if len(items) > 0 {
		return &kpd.Error{Code: kpd.CodeBadRequest, Message: "invalid targets", Items: items}
	}
	return nil
}

// targetProblem describes what is wrong with t, "" if nothing.
func targetProblem(t kpd.ClaimTarget, seen map[string]bool) string {
	if !kpd.ValidDID(t.DID) {
		return "did is not a DID (did:<method>:<id>)"
	}
	if seen[t.DID] {
		return "did is listed more than once"
	}
	for i, d := range t.Devices {
		if !kpd.ValidDevice(d) {
			return fmt.Sprintf("devices[%d] is not a device name", i)
		}
	}
	return ""
}
