package httpapi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

func TestStatusOf(t *testing.T) {
	for code, status := range map[kpd.Code]int{
		kpd.CodeBadRequest: 400, kpd.CodeUnauthorized: 401, kpd.CodeForbidden: 403, kpd.CodeNotFound: 404,
		kpd.CodeConflict: 409, kpd.CodeNoKeyPackages: 409, kpd.CodeExhausted: 409,
		kpd.CodePayloadTooLarge: 413,
		kpd.CodeMalformed:       422, kpd.CodeUnsupportedVersion: 422, kpd.CodeUnsupportedCipherSuite: 422,
		kpd.CodeInvalidKeyPackage: 422, kpd.CodeBadSignature: 422, kpd.CodeLifetimeInvalid: 422,
		kpd.CodeIdentityMismatch: 422, kpd.CodeUnknownKeyPackage: 422, kpd.CodeNotClaimedByCaller: 422,
		kpd.CodeAlreadyConsumed: 422, kpd.CodeSuiteMismatch: 422, kpd.CodeQuotaExceeded: 422,
		kpd.CodeRateLimited: 429, kpd.CodeUnavailable: 503, kpd.CodeInternal: 500, "NoSuchCode": 500,
	} {
		if got := httpapi.StatusOf(code); got != status {
			t.Errorf("StatusOf(%s) = %d, want %d", code, got, status)
		}
	}
}

// TestPublishRejections publishes one invalid KeyPackage per SPEC section 3
// reason, each alone and then all in one batch with a valid one: the batch
// stores nothing and lists every invalid item.
func TestPublishRejections(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	fx := fixture(t, 1)
	dev1 := fx.KeyPackages["alice_dev1"]

	wrongVersion := bytes.Clone(dev1.Bare)
	wrongVersion[1] = 2 // KeyPackage.version mls10 (1) becomes 2
	sameKeys, _ := s.keyPackageWith(1, mlstest.Options{Identity: alice + "#dev1", Modify: func(kp *mls.KeyPackage) {
		kp.LeafNode.EncryptionKey = kp.InitKey
	}})
	cases := []struct {
		name string
		kp   []byte
		code kpd.Code
	}{
		{"truncated", fx.Invalid.Truncated, kpd.CodeMalformed},
		{"trailing bytes", fx.Invalid.TrailingBytes, kpd.CodeMalformed},
		{"version 2", wrongVersion, kpd.CodeUnsupportedVersion},
		{"unconfigured suite 77", fixture(t, 77).KeyPackages["alice_dev1"].Message, kpd.CodeUnsupportedCipherSuite},
		{"encryption_key equals init_key", sameKeys, kpd.CodeInvalidKeyPackage},
		{"bad signature", fx.Invalid.BadSignature, kpd.CodeBadSignature},
		{"expired", fx.KeyPackages["alice_expired"].Message, kpd.CodeLifetimeInvalid},
		{"bob's KeyPackage", fx.KeyPackages["bob"].Message, kpd.CodeIdentityMismatch},
		{"over 64 KiB", make([]byte, 64<<10+1), kpd.CodePayloadTooLarge},
	}
	a := s.as(alice)
	for _, c := range cases {
		_, err := a.Publish(ctx, "dev1", [][]byte{c.kp})
		e := wantCode(t, err, c.code)
		if len(e.Errors) != 1 || e.Errors[0].Index != 0 || e.Errors[0].Code != c.code || e.Errors[0].Detail == "" {
			t.Errorf("%s: errors = %+v", c.name, e.Errors)
		}
	}

	batch := [][]byte{dev1.Message}
	for _, c := range cases {
		batch = append(batch, c.kp)
	}
	_, err := a.Publish(ctx, "dev1", batch)
	e := wantCode(t, err, cases[0].code)
	if len(e.Errors) != len(cases) {
		t.Fatalf("batch errors = %+v, want one per invalid item", e.Errors)
	}
	for i, ie := range e.Errors {
		if ie.Index != i+1 || ie.Code != cases[i].code {
			t.Errorf("errors[%d] = %+v, want index %d code %s", i, ie, i+1, cases[i].code)
		}
	}
	_, err = a.Inventory(ctx, "dev1", true)
	wantCode(t, err, kpd.CodeNotFound) // nothing stored, not even the device
}

// TestPublishConflict: a ref stored for one DID cannot be published by
// another (here with the identity check off, as for test vectors), nor on
// another device.
func TestPublishConflict(t *testing.T) {
	s := start(t, func(o *options) { o.policy.SkipIdentityCheck = true })
	ctx := context.Background()
	dev1 := fixture(t, 1).KeyPackages["alice_dev1"]
	must(s.as(alice).Publish(ctx, "dev1", [][]byte{dev1.Message}))(t)

	_, err := s.as(bob).Publish(ctx, "phone", [][]byte{dev1.Message})
	wantCode(t, err, kpd.CodeConflict)
	fresh, _ := s.keyPackage(1, alice+"#dev2", false)
	_, err = s.as(alice).Publish(ctx, "dev2", [][]byte{fresh, dev1.Bare})
	if e := wantCode(t, err, kpd.CodeConflict); len(e.Errors) != 1 || e.Errors[0].Index != 1 {
		t.Fatalf("errors = %+v, want the second item", e.Errors)
	}
	_, err = s.as(alice).Inventory(ctx, "dev2", false)
	wantCode(t, err, kpd.CodeNotFound) // the valid item was not stored either

	// A batch refused for an invalid item lists its conflicts too, in
	// batch order, and the problem's code is the first item's.
	bad := fixture(t, 1).Invalid.BadSignature
	_, err = s.as(alice).Publish(ctx, "dev2", [][]byte{fresh, bad, dev1.Bare})
	e := wantCode(t, err, kpd.CodeBadSignature)
	if len(e.Errors) != 2 || e.Errors[0].Index != 1 || e.Errors[0].Code != kpd.CodeBadSignature ||
		e.Errors[1].Index != 2 || e.Errors[1].Code != kpd.CodeConflict || !strings.Contains(e.Errors[1].Detail, `"dev1"`) {
		t.Fatalf("errors = %+v, want a bad signature at 1 and a conflict with dev1 at 2", e.Errors)
	}
	_, err = s.as(bob).Publish(ctx, "phone", [][]byte{dev1.Message, bad})
	if e := wantCode(t, err, kpd.CodeConflict); len(e.Errors) != 2 || e.Errors[0].Code != kpd.CodeConflict || e.Errors[1].Code != kpd.CodeBadSignature {
		t.Fatalf("errors = %+v, want a conflict at 0 and a bad signature at 1", e.Errors)
	}
	_, err = s.as(alice).Inventory(ctx, "dev2", false)
	wantCode(t, err, kpd.CodeNotFound)

	again := must(s.as(alice).Publish(ctx, "dev1", [][]byte{dev1.Bare}))(t)
	if again.Results[0].Status != kpd.PublishDuplicate {
		t.Errorf("re-publish: %+v, want duplicate", again.Results[0])
	}
	if _, err := s.as(bob).Devices(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestQuotas: over the per-device pool or the per-DID device count is
// QuotaExceeded.
func TestQuotas(t *testing.T) {
	limits := &limitRecorder{}
	s := start(t, func(o *options) {
		o.kv = kv.Options{MaxAvailablePerSuite: 2, MaxDevicesPerDID: 1}
		o.config = func(c *httpapi.Config) { c.Metrics = limits }
	})
	ctx := context.Background()
	a := s.as(alice)
	kps := make([][]byte, 3)
	for i := range kps {
		kps[i], _ = s.keyPackage(1, alice+"#dev1", false)
	}
	_, err := a.Publish(ctx, "dev1", kps)
	wantLimit(t, err, kpd.CodeQuotaExceeded, kpd.LimitAvailablePerSuite)
	must(a.Publish(ctx, "dev1", kps[:2]))(t)
	_, err = a.Publish(ctx, "dev1", kps[2:])
	wantLimit(t, err, kpd.CodeQuotaExceeded, kpd.LimitAvailablePerSuite)

	other, _ := s.keyPackage(1, alice+"#dev2", false)
	_, err = a.Publish(ctx, "dev2", [][]byte{other})
	wantLimit(t, err, kpd.CodeQuotaExceeded, kpd.LimitDevicesPerDID)
	limits.want(t, kpd.LimitAvailablePerSuite, kpd.LimitAvailablePerSuite, kpd.LimitDevicesPerDID)
}

// wantLimit asserts that err is a code problem naming limit.
func wantLimit(t *testing.T, err error, code kpd.Code, limit string) {
	t.Helper()
	if e := wantCode(t, err, code); e.Limit != limit {
		t.Fatalf("problem names limit %q, want %q", e.Limit, limit)
	}
}

// limitRecorder is a RequestObserver that records the limits it hears of.
type limitRecorder struct {
	mu     sync.Mutex
	limits []string
}

func (r *limitRecorder) ObserveRequest(string, int, time.Duration) {}

func (r *limitRecorder) LimitExceeded(limit string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.limits = append(r.limits, limit)
}

func (r *limitRecorder) want(t *testing.T, limits ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Equal(r.limits, limits) {
		t.Fatalf("limits counted %v, want %v", r.limits, limits)
	}
}

// TestSizeLimits: each limit of SPEC section 7 is a 413 PayloadTooLarge.
func TestSizeLimits(t *testing.T) {
	limits := &limitRecorder{}
	s := start(t, func(o *options) {
		o.limits = httpapi.Limits{MaxBodyBytes: 4096, MaxWelcomeBytes: 600, MaxPublishBatch: 2, MaxClaimTargets: 2,
			MaxKeyPackageBytes: 1000}
		o.config = func(c *httpapi.Config) { c.Metrics = limits }
	})
	ctx := context.Background()
	a := s.as(alice)
	kp, _ := s.keyPackage(1, alice+"#dev1", false)

	_, err := a.Publish(ctx, "dev1", [][]byte{kp, kp, kp})
	wantLimit(t, err, kpd.CodePayloadTooLarge, kpd.LimitPublishBatch)
	_, err = a.Publish(ctx, "dev1", [][]byte{make([]byte, 4096)})
	wantLimit(t, err, kpd.CodePayloadTooLarge, kpd.LimitBodySize)
	_, err = a.Publish(ctx, "dev1", [][]byte{kp, make([]byte, 1001)})
	wantLimit(t, err, kpd.CodePayloadTooLarge, kpd.LimitKeyPackageSize)

	targets := []kpd.ClaimTarget{{DID: alice}, {DID: bob}, {DID: carol}}
	_, err = s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: targets})
	wantLimit(t, err, kpd.CodePayloadTooLarge, kpd.LimitClaimTargets)

	_, err = s.as(bob).PostWelcome(ctx, "c", make([]byte, 601))
	wantLimit(t, err, kpd.CodePayloadTooLarge, kpd.LimitWelcomeSize)
	limits.want(t, kpd.LimitPublishBatch, kpd.LimitBodySize, kpd.LimitKeyPackageSize, kpd.LimitClaimTargets, kpd.LimitWelcomeSize)
	if len(must(a.Publish(ctx, "dev1", [][]byte{kp}))(t).Results) != 1 {
		t.Fatal("a publish within the limits failed")
	}
}

// TestListLimits: the refs of a delete or sync and the devices a claim
// names (per target and in exclude_devices) are capped at their documented
// defaults: one more is 413 PayloadTooLarge naming the limit, counted,
// before the store runs (the device need not exist); the cap itself works.
func TestListLimits(t *testing.T) {
	limits := &limitRecorder{}
	s := start(t, func(o *options) { o.config = func(c *httpapi.Config) { c.Metrics = limits } })
	ctx := context.Background()
	a := s.as(alice)

	refs := make([]kpd.Ref, httpapi.DefaultMaxRefs+1)
	for i := range refs {
		refs[i] = kpd.Ref(fmt.Sprintf("%064x", i))
	}
	_, err := a.DeleteKeyPackages(ctx, "nodevice", refs)
	wantLimit(t, err, kpd.CodePayloadTooLarge, "refs_per_request")
	_, err = a.Sync(ctx, "nodevice", refs)
	wantLimit(t, err, kpd.CodePayloadTooLarge, "refs_per_request")
	kp, _ := s.keyPackage(1, alice+"#dev1", false)
	must(a.Publish(ctx, "dev1", [][]byte{kp}))(t)
	if del := must(a.DeleteKeyPackages(ctx, "dev1", refs[1:]))(t); del.Deleted != 0 {
		t.Fatalf("deleting %d unknown refs deleted %d", len(refs)-1, del.Deleted)
	}
	if res := must(a.Sync(ctx, "dev1", refs[1:]))(t); len(res.Unknown) != httpapi.DefaultMaxRefs || len(res.Deleted) != 1 {
		t.Fatalf("sync of %d unknown refs: %d unknown, %d deleted; want all unknown and the one KeyPackage deleted",
			len(refs)-1, len(res.Unknown), len(res.Deleted))
	}

	devices := make([]string, httpapi.DefaultMaxClaimDevices+1)
	for i := range devices {
		devices[i] = fmt.Sprintf("d%d", i)
	}
	_, err = s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: carol}, {DID: alice, Devices: devices}}})
	wantLimit(t, err, kpd.CodePayloadTooLarge, "claim_devices")
	_, err = a.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: carol}}, ExcludeDevices: devices})
	wantLimit(t, err, kpd.CodePayloadTooLarge, "claim_devices")
	res := must(s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: alice, Devices: devices[1:]}}}))(t)
	if len(res.Missing) != httpapi.DefaultMaxClaimDevices {
		t.Fatalf("a claim of %d unknown devices has %d missing", len(devices)-1, len(res.Missing))
	}
	must(a.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: carol}}, ExcludeDevices: devices[1:]}))(t)
	limits.want(t, "refs_per_request", "refs_per_request", "claim_devices", "claim_devices")
}

// The limits of TestListLimits are configurable.
func TestListLimitsConfigured(t *testing.T) {
	s := start(t, func(o *options) { o.limits = httpapi.Limits{MaxRefs: 2, MaxClaimDevices: 1} })
	ctx := context.Background()
	refs := []kpd.Ref{"aa", "bb", "cc"}
	_, err := s.as(alice).Sync(ctx, "dev1", refs)
	wantLimit(t, err, kpd.CodePayloadTooLarge, "refs_per_request")
	_, err = s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: alice, Devices: []string{"a", "b"}}}})
	wantLimit(t, err, kpd.CodePayloadTooLarge, "claim_devices")
	_, err = s.as(alice).Claim(ctx, client.ClaimRequest{CipherSuite: 1,
		Targets: []kpd.ClaimTarget{{DID: bob}}, ExcludeDevices: []string{"a", "b"}})
	wantLimit(t, err, kpd.CodePayloadTooLarge, "claim_devices")
}

// Of many refs that are not hex, a delete or sync lists only the first 100
// in errors, and counts them all in the detail: the answer stays small.
func TestInvalidRefsListedInPart(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	refs := make([]kpd.Ref, 250)
	refs[0] = "abcd"
	for i := 1; i < len(refs); i++ {
		refs[i] = "not hex"
	}
	check := func(err error) {
		t.Helper()
		e := wantCode(t, err, kpd.CodeBadRequest)
		if len(e.Errors) != 100 || e.Errors[0].Index != 1 || e.Errors[99].Index != 100 {
			t.Fatalf("%d errors, from index %d; want 100, indexes 1 to 100", len(e.Errors), e.Errors[0].Index)
		}
		if !strings.Contains(e.Detail, "249 of 250") {
			t.Fatalf("detail %q does not count the 249 invalid refs of 250", e.Detail)
		}
	}
	_, err := s.as(alice).Sync(ctx, "dev1", refs)
	check(err)
	_, err = s.as(alice).DeleteKeyPackages(ctx, "dev1", refs)
	check(err)
	_, err = s.as(alice).Sync(ctx, "dev1", refs[:3])
	if e := wantCode(t, err, kpd.CodeBadRequest); len(e.Errors) != 2 || strings.Contains(e.Detail, "first") {
		t.Fatalf("two invalid refs: errors %+v, detail %q; want both listed", e.Errors, e.Detail)
	}
}

// TestWelcomeRejections produces every reason a Welcome's ref is not
// routed, and the parse failures of a posted Welcome.
func TestWelcomeRejections(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	a, b, c := s.as(alice), s.as(bob), s.as(carol)
	kp1, _ := s.keyPackage(1, alice+"#dev1", false)
	kp2, _ := s.keyPackage(1, alice+"#dev1", false)
	pub := must(a.Publish(ctx, "dev1", [][]byte{kp1, kp2}))(t)
	claim := must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	// bob holds ref1; ref2 stays available.
	ref1, ref2 := claim.KeyPackages[0].Ref, pub.Results[0].Ref
	if ref2 == ref1 {
		ref2 = pub.Results[1].Ref
	}

	unknown := make([]byte, 32)
	rand.Read(unknown)
	reject := func(poster *client.Client, w []byte, want kpd.Code, ref kpd.Ref) {
		t.Helper()
		_, err := poster.PostWelcome(ctx, "convo", w)
		e := wantCode(t, err, want)
		if len(e.Rejected) != 1 || e.Rejected[0].Ref != ref || e.Rejected[0].Reason != want {
			t.Fatalf("rejected = %+v, want %s %s", e.Rejected, ref, want)
		}
	}
	reject(b, s.welcome(s.suite(1), kpd.RefOf(unknown)), kpd.CodeUnknownKeyPackage, kpd.RefOf(unknown))
	reject(c, s.welcome(s.suite(1), ref1), kpd.CodeNotClaimedByCaller, ref1)
	reject(b, s.welcome(s.suite(1), ref2), kpd.CodeNotClaimedByCaller, ref2) // available, not claimed
	reject(b, s.welcome(s.suite(3), ref1), kpd.CodeSuiteMismatch, ref1)

	// One routable ref is enough: the others are reported as rejected.
	w := s.welcome(s.suite(1), ref1, kpd.RefOf(unknown))
	posted := must(b.PostWelcome(ctx, "convo", w))(t)
	if len(posted.Recipients) != 1 || len(posted.Rejected) != 1 || posted.Rejected[0].Reason != kpd.CodeUnknownKeyPackage {
		t.Fatalf("partial post = %+v", posted)
	}
	_, err := c.PostWelcome(ctx, "convo", w)
	wantCode(t, err, kpd.CodeConflict) // the same Welcome from another sender
	must(a.Ack(ctx, "dev1", posted.WelcomeID))(t)
	reject(b, s.welcome(s.suite(1), ref1), kpd.CodeAlreadyConsumed, ref1)

	// Parse failures and suites come before routing.
	_, err = b.PostWelcome(ctx, "convo", w[:len(w)-1])
	wantCode(t, err, kpd.CodeMalformed)
	_, err = b.PostWelcome(ctx, "convo", append(bytes.Clone(w), 0))
	wantCode(t, err, kpd.CodeMalformed)
	_, err = b.PostWelcome(ctx, "convo", fixture(t, 77).Welcome.Message)
	wantCode(t, err, kpd.CodeUnsupportedCipherSuite)
	_, err = b.PostWelcome(ctx, "", w)
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = b.PostWelcome(ctx, "tab\tin id", w)
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = b.PostWelcome(ctx, strings.Repeat("x", kpd.MaxConvoIDLength+1), w)
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = b.PostWelcome(ctx, "convo", nil)
	wantCode(t, err, kpd.CodeBadRequest)
}

// TestClaimMisses covers NoKeyPackages, Exhausted, all_or_nothing and the
// claim's input checks.
func TestClaimMisses(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	a, b := s.as(alice), s.as(bob)
	kp, ref := s.keyPackage(1, alice+"#dev1", false)
	must(a.Publish(ctx, "dev1", [][]byte{kp}))(t)

	// all_or_nothing with carol missing claims nothing.
	_, err := b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, AllOrNothing: true,
		Targets: []kpd.ClaimTarget{{DID: alice}, {DID: carol}}})
	e := wantCode(t, err, kpd.CodeConflict)
	if len(e.Missing) != 1 || e.Missing[0].DID != carol || e.Missing[0].Reason != kpd.CodeNoKeyPackages {
		t.Fatalf("missing = %+v, want carol NoKeyPackages", e.Missing)
	}
	if inv := must(a.Inventory(ctx, "dev1", false))(t); inv.Suites[0].Available != 1 || inv.Suites[0].Claimed != 0 {
		t.Fatalf("all_or_nothing claimed something: %+v", inv.Suites)
	}

	res := must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}, {DID: carol}}}))(t)
	if len(res.KeyPackages) != 1 || res.KeyPackages[0].Ref != ref || len(res.Missing) != 1 || res.Missing[0].Reason != kpd.CodeNoKeyPackages {
		t.Fatalf("claim = %+v, want alice's one and carol missing", res)
	}
	res = must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	if len(res.KeyPackages) != 0 || len(res.Missing) != 1 || res.Missing[0].Reason != kpd.CodeExhausted || res.Missing[0].Device != "dev1" {
		t.Fatalf("second claim = %+v, want dev1 Exhausted", res)
	}

	_, err = b.Claim(ctx, client.ClaimRequest{CipherSuite: 77, Targets: []kpd.ClaimTarget{{DID: alice}}})
	wantCode(t, err, kpd.CodeUnsupportedCipherSuite)
	_, err = b.Claim(ctx, client.ClaimRequest{CipherSuite: 1})
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}, {DID: "alice"}, {DID: alice}}})
	e = wantCode(t, err, kpd.CodeBadRequest)
	if len(e.Errors) != 2 || e.Errors[0].Index != 1 || e.Errors[1].Index != 2 {
		t.Fatalf("errors = %+v, want indexes 1 (not a DID) and 2 (repeated)", e.Errors)
	}
	_, err = b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice, Devices: []string{"no/slash"}}}})
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}, ExcludeDevices: []string{""}})
	wantCode(t, err, kpd.CodeBadRequest)

	// A missing cipher_suite is a BadRequest, a name is accepted.
	resp := s.do("POST", "/v1/key-packages/claim", bob, "application/json", []byte(`{"targets":[{"did":"`+alice+`"}]}`))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("claim without cipher_suite: status %d", resp.StatusCode)
	}
	resp = s.do("POST", "/v1/key-packages/claim", bob, "application/json",
		[]byte(`{"cipher_suite":"MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519","targets":[{"did":"`+alice+`"}]}`))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("claim with a suite name: status %d", resp.StatusCode)
	}
	// The number as text, decimal or 0x hex, names the suite too.
	for suite, status := range map[string]int{`"1"`: 200, `"0x0001"`: 200, `"0x1"`: 200, `"MLS_NO_SUCH_SUITE"`: 422,
		`"0x9999"`: 422, `"70000"`: 422, `"-1"`: 422} {
		resp = s.do("POST", "/v1/key-packages/claim", bob, "application/json",
			[]byte(`{"cipher_suite":`+suite+`,"targets":[{"did":"`+alice+`"}]}`))
		if resp.StatusCode != status {
			t.Errorf("claim with cipher_suite %s: status %d, want %d", suite, resp.StatusCode, status)
		}
	}
}

// TestPublishLargeBatchOrder: a batch big enough to be validated by several
// goroutines keeps its order: invalid items are reported at their indices
// in order, and a valid batch's results name each item's ref at its index.
func TestPublishLargeBatchOrder(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // several validators even on one CPU
	s := start(t)
	ctx := context.Background()
	fx := fixture(t, 1)
	a := s.as(alice)

	var batch [][]byte
	var refs []kpd.Ref
	var bad []int
	for i := range 60 {
		switch i % 7 {
		case 3:
			batch = append(batch, fx.Invalid.BadSignature)
			bad = append(bad, i)
		case 5:
			batch = append(batch, fx.KeyPackages["bob"].Message)
			bad = append(bad, i)
		default:
			kp, ref := s.keyPackage(1, alice+"#dev1", false)
			batch, refs = append(batch, kp), append(refs, ref)
		}
	}
	_, err := a.Publish(ctx, "dev1", batch)
	e := wantCode(t, err, kpd.CodeBadSignature)
	if len(e.Errors) != len(bad) {
		t.Fatalf("%d errors, want %d: %+v", len(e.Errors), len(bad), e.Errors)
	}
	for j, ie := range e.Errors {
		want := kpd.CodeBadSignature
		if bad[j]%7 == 5 {
			want = kpd.CodeIdentityMismatch
		}
		if ie.Index != bad[j] || ie.Code != want {
			t.Errorf("errors[%d] = %+v, want index %d code %s", j, ie, bad[j], want)
		}
	}

	var valid [][]byte
	for i, kp := range batch {
		if i%7 != 3 && i%7 != 5 {
			valid = append(valid, kp)
		}
	}
	pub := must(a.Publish(ctx, "dev1", valid))(t)
	if len(pub.Results) != len(refs) || pub.Inventory.Suites[0].Available != len(refs) {
		t.Fatalf("%d results, inventory %+v; want %d", len(pub.Results), pub.Inventory.Suites, len(refs))
	}
	for i, r := range pub.Results {
		if r.Ref != refs[i] || r.Status != kpd.PublishStored {
			t.Errorf("results[%d] = %+v, want %s stored", i, r, refs[i])
		}
	}
}

// An item of a publish that is not bytes (not base64 in JSON, not a byte
// string in CBOR) is named in errors like any invalid item; the batch is
// refused with 400.
func TestPublishItemNotBytes(t *testing.T) {
	s := start(t)
	kp, _ := s.keyPackage(1, alice+"#dev1", false)
	bad := fixture(t, 1).Invalid.BadSignature
	check := func(name string, resp *http.Response, want map[int]kpd.Code) {
		t.Helper()
		body, _ := io.ReadAll(resp.Body)
		var p struct {
			Code   kpd.Code
			Errors []kpd.ItemError
		}
		if err := json.Unmarshal(body, &p); err != nil || resp.StatusCode != http.StatusBadRequest || p.Code != kpd.CodeBadRequest {
			t.Fatalf("%s: %d %s, want a 400 BadRequest problem", name, resp.StatusCode, body)
		}
		got := map[int]kpd.Code{}
		for _, e := range p.Errors {
			got[e.Index] = e.Code
		}
		if !maps.Equal(got, want) {
			t.Fatalf("%s: errors %+v, want %v", name, p.Errors, want)
		}
	}
	resp := s.do("POST", "/v1/devices/dev1/key-packages", alice, "application/json",
		[]byte(`{"key_packages":["`+b64(kp)+`","***",7,"`+b64(bad)+`"]}`))
	check("JSON", resp, map[int]kpd.Code{1: kpd.CodeBadRequest, 2: kpd.CodeBadRequest, 3: kpd.CodeBadSignature})

	body, _ := cbor.Marshal(map[string]any{"key_packages": []any{kp, "text, not bytes"}})
	resp = s.do("POST", "/v1/devices/dev1/key-packages", alice, "application/cbor", body)
	check("CBOR", resp, map[int]kpd.Code{1: kpd.CodeBadRequest})

	_, err := s.as(alice).Inventory(context.Background(), "dev1", false)
	wantCode(t, err, kpd.CodeNotFound) // nothing stored
}

// A JSON body of more than MaxBodyValues values, or a CBOR body of more
// items, is refused before it is decoded (decoding many tiny values
// allocates many times the body's size); commas inside strings are not
// values.
func TestBodyValuesLimit(t *testing.T) {
	limits := &limitRecorder{}
	s := start(t, func(o *options) { o.config = func(c *httpapi.Config) { c.Metrics = limits } })
	many := `{"refs":[""` + strings.Repeat(`,""`, httpapi.MaxBodyValues+1) + `]}`
	resp := s.do("POST", "/v1/devices/dev1/key-packages/sync", alice, "application/json", []byte(many))
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), `"limit":"body_values"`) {
		t.Fatalf("a body of %d values: %d %s", httpapi.MaxBodyValues+2, resp.StatusCode, body)
	}
	limits.want(t, kpd.LimitBodyValues)

	// CBOR: 100 targets of 1,000 devices each, every one an item.
	targets := make([]map[string]any, 100)
	for i := range targets {
		targets[i] = map[string]any{"did": alice, "devices": make([]string, 1000)}
	}
	cb, _ := cbor.Marshal(map[string]any{"cipher_suite": 1, "targets": targets})
	resp = s.do("POST", "/v1/key-packages/claim", bob, "application/cbor", cb)
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), `"limit":"body_values"`) {
		t.Fatalf("a CBOR body of over %d items: %d %s", httpapi.MaxBodyValues, resp.StatusCode, body)
	}
	// Indefinite lengths are refused: 0x9f opens an indefinite array.
	indefinite := []byte{0xa1, 0x64, 'r', 'e', 'f', 's', 0x9f, 0xff}
	resp = s.do("POST", "/v1/devices/dev1/key-packages/sync", alice, "application/cbor", indefinite)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("an indefinite-length CBOR array: %d, want 400", resp.StatusCode)
	}

	// As many commas in a string: not values. (The convo_id is too long.)
	long := `{"convo_id":"` + strings.Repeat(",", httpapi.MaxBodyValues+1) + `","welcome":"AAAA"}`
	resp = s.do("POST", "/v1/welcomes", alice, "application/json", []byte(long))
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "convo_id") {
		t.Fatalf("commas in a string: %d %s, want 400 for the convo_id", resp.StatusCode, body)
	}
	// An escaped backslash does not escape the closing quote.
	resp = s.do("POST", "/v1/devices/dev1/key-packages/sync", alice, "application/json",
		[]byte(`{"refs":["\\\\"`+strings.Repeat(`,""`, httpapi.MaxBodyValues+1)+`]}`))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("values after a string ending in an escaped backslash: %d, want 413", resp.StatusCode)
	}
	// An escaped quote does not end a string.
	escaped := `{"convo_id":"\"` + strings.Repeat(",", httpapi.MaxBodyValues+1) + `","welcome":"AAAA"}`
	resp = s.do("POST", "/v1/welcomes", alice, "application/json", []byte(escaped))
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("commas after an escaped quote: %d, want 400 for the convo_id", resp.StatusCode)
	}
}
