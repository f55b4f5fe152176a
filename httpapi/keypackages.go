package httpapi

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/mls"
)

// registerKeyPackages registers the routes of a device's KeyPackages.
func (s *server) registerKeyPackages() {
	const path = "/v1/devices/{device}/key-packages"
	s.handle(http.MethodPost, path, kpd.OpPublishKeyPackages, s.publish)
	s.handle(http.MethodGet, path, kpd.OpGetInventory, s.inventory)
	s.handle(http.MethodDelete, path, kpd.OpDeleteKeyPackages, s.deleteKeyPackages)
	s.handle(http.MethodPost, path+"/sync", kpd.OpSyncKeyPackages, s.syncKeyPackages)
}

type publishRequest struct {
	KeyPackages []publishItem `json:"key_packages"`
}

// publishItem is one KeyPackage of a publish body. Unlike a byteString
// field, an item that is not bytes (not base64 in JSON, not a byte string
// in CBOR) does not fail the whole body: its error is kept, and the answer
// names the item.
type publishItem struct {
	b   byteString
	err error
}

func (p *publishItem) UnmarshalJSON(data []byte) error {
	p.err = p.b.UnmarshalJSON(data)
	return nil
}

func (p *publishItem) UnmarshalCBOR(data []byte) error {
	if cborDec.Unmarshal(data, &p.b) != nil {
		p.err = errors.New("byte fields must be CBOR byte strings")
	}
	return nil
}

type publishResponse struct {
	Results   []kpd.PublishResult `json:"results"`
	Inventory *kpd.Inventory      `json:"inventory"`
}

// publish validates a batch of KeyPackages and stores it whole, or nothing:
// if any item is invalid the problem's code is the first invalid item's and
// `errors` lists every invalid item.
func (s *server) publish(w http.ResponseWriter, r *request) error {
	var req publishRequest
	if err := decode(r.Request, &req); err != nil {
		return err
	}
	switch n := len(req.KeyPackages); {
	case n == 0:
		return kpd.Errorf(kpd.CodeBadRequest, "key_packages is empty")
	case n > s.limits.MaxPublishBatch:
		return &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitPublishBatch,
			Message: fmt.Sprintf("%d KeyPackages in one request; at most %d", n, s.limits.MaxPublishBatch)}
	}
	// Charged before validation: signature checks are the expensive part.
	if s.rates != nil {
		if err := s.rates.Publish(r.caller, len(req.KeyPackages)); err != nil {
			return err
		}
	}
	batch := make([]byteString, len(req.KeyPackages))
	for i, item := range req.KeyPackages {
		batch[i] = item.b
	}
	validated := s.validateBatch(batch, r.caller)
	kps := make([]kpd.KeyPackage, 0, len(req.KeyPackages))
	at := make([]int, 0, len(req.KeyPackages)) // batch index of kps[j]
	var items []kpd.ItemError
	for i, b := range batch {
		v, err := validated[i].kp, validated[i].err
		if decodeErr := req.KeyPackages[i].err; decodeErr != nil {
			err = &kpd.Error{Code: kpd.CodeBadRequest, Message: decodeErr.Error()}
		}
		if err != nil {
			if kpd.ErrorCode(err) == kpd.CodeInternal {
				return err
			}
			items = append(items, kpd.ItemError{Index: i, Code: kpd.ErrorCode(err), Detail: kpd.ErrorMessage(err)})
			continue
		}
		kps = append(kps, kpd.KeyPackage{
			Ref:         kpd.RefOf(v.Ref),
			DID:         r.caller,
			Device:      r.device,
			CipherSuite: uint16(v.Suite.ID),
			Data:        b,
			LastResort:  v.LastResort,
			NotBefore:   v.NotBefore,
			NotAfter:    v.NotAfter,
		})
		at = append(at, i)
	}
	if len(items) > 0 {
		// The batch is refused: list the valid items stored elsewhere
		// too (SPEC section 3 lists Conflict with the other reasons), so
		// that a client that fixes the listed items does not meet a
		// second refusal.
		refs := make([]kpd.Ref, len(kps))
		for j, kp := range kps {
			refs[j] = kp.Ref
		}
		conflicts, err := s.store.StoredElsewhere(r.Context(), r.caller, r.device, refs)
		if err != nil {
			return err
		}
		for _, c := range conflicts {
			c.Index = at[c.Index]
			items = append(items, c)
		}
		slices.SortFunc(items, func(a, b kpd.ItemError) int { return cmp.Compare(a.Index, b.Index) })
		var limit string
		if slices.ContainsFunc(items, func(e kpd.ItemError) bool { return e.Code == kpd.CodePayloadTooLarge }) {
			limit = kpd.LimitKeyPackageSize
		}
		return &kpd.Error{
			Limit:   limit,
			Code:    items[0].Code,
			Message: fmt.Sprintf("%d of %d KeyPackages are invalid; nothing was stored", len(items), len(req.KeyPackages)),
			Items:   items,
		}
	}
	results, inv, err := s.store.Publish(r.Context(), r.caller, r.device, kps)
	if err != nil {
		return err
	}
	return s.respond(w, r.Request, http.StatusOK, publishResponse{Results: nonNil(results), Inventory: inventory(inv)})
}

// validation is the outcome of validating one KeyPackage of a batch.
type validation struct {
	kp  *mls.Validated
	err error
}

// validateBatch validates every KeyPackage of a publish batch for did, at
// one policy time, and returns the outcomes in batch order. The signature
// checks are nearly all of a publish's CPU, so a batch is dealt into up to
// GOMAXPROCS runs (run r takes items r, r+runs, ..., so that a batch whose
// suites cost differently is still shared evenly), validated side by side,
// each with its signatures verified together (mls.ValidateKeyPackages):
// under light load a batch of 50 then takes a fraction of the time, and
// under full load the CPUs are busy either way.
func (s *server) validateBatch(batch []byteString, did string) []validation {
	policy := s.mlsPolicy()
	out := make([]validation, len(batch))
	run := func(r, runs int) {
		items := make([][]byte, 0, len(batch)/runs+1)
		at := make([]int, 0, len(batch)/runs+1)
		for i := r; i < len(batch); i += runs {
			if b := batch[i]; len(b) > s.limits.MaxKeyPackageBytes {
				out[i].err = &kpd.Error{Code: kpd.CodePayloadTooLarge,
					Message: fmt.Sprintf("KeyPackage of %d bytes; at most %d", len(b), s.limits.MaxKeyPackageBytes)}
				continue
			}
			items = append(items, batch[i])
			at = append(at, i)
		}
		vs, errs := s.registry.ValidateKeyPackages(items, did, policy)
		for j, i := range at {
			out[i] = validation{kp: vs[j], err: errs[j]}
		}
	}
	runs := min(runtime.GOMAXPROCS(0), (len(batch)+minPerValidator-1)/minPerValidator)
	if runs <= 1 {
		run(0, 1)
		return out
	}
	var wg sync.WaitGroup
	for r := range runs {
		wg.Go(func() { run(r, runs) })
	}
	wg.Wait()
	return out
}

// minPerValidator is the fewest KeyPackages worth a goroutine of their own
// in validateBatch: a suite-1 KeyPackage takes about 40 µs to validate in a
// batch, a goroutine about 1 µs to start, and batch verification pays off
// more the more signatures it has.
const minPerValidator = 8

// mlsPolicy is the validation policy at the current time.
func (s *server) mlsPolicy() mls.Policy {
	return mls.Policy{
		Now:               s.clock.Now(),
		MaxLifetime:       s.policy.MaxLifetime,
		ClockSkew:         s.policy.ClockSkew,
		AllowX509:         s.policy.AllowX509,
		SkipIdentityCheck: s.policy.SkipIdentityCheck,
	}
}

// inventoryResponse is an inventory and, with ?list=1, every KeyPackage.
type inventoryResponse struct {
	kpd.Inventory
	KeyPackages []kpd.KeyPackageInfo `json:"key_packages,omitzero"`
}

// inventory returns the device's counts and, with ?list=1, its
// KeyPackages. 404 NotFound for a device the caller does not have.
func (s *server) inventory(w http.ResponseWriter, r *request) error {
	list := false
	if v := r.URL.Query().Get("list"); v != "" {
		var err error
		if list, err = strconv.ParseBool(v); err != nil {
			return kpd.Errorf(kpd.CodeBadRequest, "list=%q: want 1 or 0", v)
		}
	}
	inv, kps, err := s.store.Inventory(r.Context(), r.caller, r.device, list)
	if err != nil {
		return err
	}
	resp := inventoryResponse{Inventory: *inventory(inv)}
	if list {
		resp.KeyPackages = nonNil(kps)
	}
	return s.respond(w, r.Request, http.StatusOK, resp)
}

// refsRequest is the body of delete and sync.
type refsRequest struct {
	Refs []kpd.Ref `json:"refs"`
}

type deleteResponse struct {
	Deleted   int            `json:"deleted"`
	Inventory *kpd.Inventory `json:"inventory"`
}

// deleteKeyPackages deletes the listed available KeyPackages of the
// device; without a body (or without refs) every available one, last
// resorts included.
func (s *server) deleteKeyPackages(w http.ResponseWriter, r *request) error {
	var req refsRequest
	if _, err := decodeOptional(r.Request, &req); err != nil {
		return err
	}
	refs, err := s.checkRefs(req.Refs)
	if err != nil {
		return err
	}
	n, inv, err := s.store.DeleteKeyPackages(r.Context(), r.caller, r.device, refs)
	if err != nil {
		return err
	}
	return s.respond(w, r.Request, http.StatusOK, deleteResponse{Deleted: n, Inventory: inventory(inv)})
}

// syncKeyPackages keeps the listed KeyPackages and deletes the device's
// other available ones; refs is required (an empty list deletes them all).
func (s *server) syncKeyPackages(w http.ResponseWriter, r *request) error {
	var req refsRequest
	if err := decode(r.Request, &req); err != nil {
		return err
	}
	if req.Refs == nil {
		return kpd.Errorf(kpd.CodeBadRequest, "refs is required (an empty list keeps nothing)")
	}
	refs, err := s.checkRefs(req.Refs)
	if err != nil {
		return err
	}
	res, err := s.store.Sync(r.Context(), r.caller, r.device, refs)
	if err != nil {
		return err
	}
	res.Deleted, res.Unknown, res.Pending = nonNil(res.Deleted), nonNil(res.Unknown), nonNil(res.Pending)
	res.Inventory = inventory(res.Inventory)
	return s.respond(w, r.Request, http.StatusOK, res)
}

// maxRefHexLength is the hex length of the longest KeyPackageRef (SHA-512).
const maxRefHexLength = 128

// checkRefs returns refs in lowercase; nil stays nil. More than MaxRefs
// refs are PayloadTooLarge. Entries that are not hex KeyPackageRefs are
// BadRequest: the detail counts them and `errors` lists the first
// maxItemErrors.
func (s *server) checkRefs(refs []kpd.Ref) ([]kpd.Ref, error) {
	if refs == nil {
		return nil, nil
	}
	if n := len(refs); n > s.limits.MaxRefs {
		return nil, &kpd.Error{Code: kpd.CodePayloadTooLarge, Limit: kpd.LimitRefsPerRequest,
			Message: fmt.Sprintf("%d refs in one request; at most %d", n, s.limits.MaxRefs)}
	}
	out := make([]kpd.Ref, len(refs))
	var items []kpd.ItemError
	invalid := 0
	for i, ref := range refs {
		lower := strings.ToLower(string(ref))
		out[i] = kpd.Ref(lower)
		if len(lower) == 0 || len(lower) > maxRefHexLength || len(lower)%2 != 0 || !isLowerHex(lower) {
			invalid++
			if len(items) < maxItemErrors {
				items = append(items, kpd.ItemError{Index: i, Code: kpd.CodeBadRequest, Detail: "not a hex KeyPackageRef"})
			}
		}
	}
	if invalid > 0 {
		msg := fmt.Sprintf("%d of %d refs are not hex KeyPackageRefs", invalid, len(refs))
		if invalid > len(items) {
			msg += fmt.Sprintf("; errors lists the first %d", len(items))
		}
		return nil, &kpd.Error{Code: kpd.CodeBadRequest, Message: msg, Items: items}
	}
	return out, nil
}

// inventory returns inv with its suites as a list, never null; a nil inv
// becomes an empty inventory.
func inventory(inv *kpd.Inventory) *kpd.Inventory {
	if inv == nil {
		inv = &kpd.Inventory{}
	}
	inv.Suites = nonNil(inv.Suites)
	return inv
}
