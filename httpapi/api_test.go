package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
)

// TestSyncDeleteAndDevices: sync keeps what the device holds and reports
// unknown and pending refs; delete removes available KeyPackages only;
// a device can be listed and removed.
func TestSyncDeleteAndDevices(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	a := s.as(alice)
	kps := make([][]byte, 3)
	for i := range kps {
		kps[i], _ = s.keyPackage(1, alice+"#dev1", false)
	}
	lr, lrRef := s.keyPackage(1, alice+"#dev1", true)
	pub := must(a.Publish(ctx, "dev1", append(kps, lr)))(t)
	if !pub.Results[3].LastResort || pub.Inventory.Suites[0].Available != 3 || pub.Inventory.Suites[0].LastResort.Ref != lrRef {
		t.Fatalf("publish = %+v, inventory %+v", pub.Results, pub.Inventory.Suites)
	}
	claimed := must(s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t).KeyPackages[0].Ref
	var kept, dropped kpd.Ref
	for _, r := range pub.Results[:3] {
		switch {
		case r.Ref == claimed:
		case kept == "":
			kept = r.Ref
		default:
			dropped = r.Ref
		}
	}
	gone := kpd.Ref(strings.Repeat("ab", 32))

	res := must(a.Sync(ctx, "dev1", []kpd.Ref{kept, kpd.Ref(strings.ToUpper(string(lrRef))), gone}))(t)
	if len(res.Deleted) != 1 || res.Deleted[0] != dropped || len(res.Unknown) != 1 || res.Unknown[0] != gone ||
		len(res.Pending) != 1 || res.Pending[0] != claimed {
		t.Fatalf("sync = %+v, want deleted %s, unknown %s, pending %s", res, dropped, gone, claimed)
	}
	if res.Inventory.Suites[0].Available != 1 || res.Inventory.Suites[0].Claimed != 1 {
		t.Fatalf("inventory after sync = %+v", res.Inventory.Suites)
	}
	_, err := a.Sync(ctx, "dev1", []kpd.Ref{"xyz"})
	if e := wantCode(t, err, kpd.CodeBadRequest); len(e.Errors) != 1 || e.Errors[0].Index != 0 {
		t.Fatalf("errors = %+v", e.Errors)
	}
	if resp := s.do("POST", "/v1/devices/dev1/key-packages/sync", alice, "", []byte(`{}`)); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("sync without refs: status %d", resp.StatusCode)
	}

	del := must(a.DeleteKeyPackages(ctx, "dev1", []kpd.Ref{}))(t)
	if del.Deleted != 0 {
		t.Fatalf("deleting an empty list deleted %d", del.Deleted)
	}
	del = must(a.DeleteKeyPackages(ctx, "dev1", nil))(t)
	if del.Deleted != 2 || del.Inventory.Suites[0].Available != 0 || del.Inventory.Suites[0].LastResort != nil || del.Inventory.Suites[0].Claimed != 1 {
		t.Fatalf("delete all = %d, inventory %+v; want the kept one and the last resort deleted, the claimed one left", del.Deleted, del.Inventory.Suites)
	}

	devices := must(a.Devices(ctx))(t)
	if len(devices) != 1 || devices[0].Device != "dev1" || devices[0].PendingWelcomes != 0 {
		t.Fatalf("devices = %+v", devices)
	}
	if err := a.DeleteDevice(ctx, "dev1"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, a.DeleteDevice(ctx, "dev1"), kpd.CodeNotFound)
	if devices := must(a.Devices(ctx))(t); len(devices) != 0 {
		t.Fatalf("devices after delete = %+v", devices)
	}
}

// TestRejectTakeAndList: rejection reasons reach the sender; take returns
// and acknowledges the oldest Welcome of a conversation; listing filters
// and pages.
func TestRejectTakeAndList(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	a, b := s.as(alice), s.as(bob)
	var refs []kpd.Ref
	for range 3 {
		kp, ref := s.keyPackage(1, alice+"#dev1", false)
		must(a.Publish(ctx, "dev1", [][]byte{kp}))(t)
		must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
		refs = append(refs, ref)
	}
	ids := make([]string, 3)
	for i, convo := range []string{"one", "two", "two"} {
		ids[i] = must(b.PostWelcome(ctx, convo, s.welcome(s.suite(1), refs[i])))(t).WelcomeID
	}

	if list := must(a.Welcomes(ctx, "dev1", client.ListOptions{}))(t); len(list) != 3 {
		t.Fatalf("%d pending, want 3", len(list))
	}
	if list := must(a.Welcomes(ctx, "dev1", client.ListOptions{ConvoID: "two", Limit: 1, Wait: time.Second}))(t); len(list) != 1 || list[0].ConvoID != "two" {
		t.Fatalf("convo two, limit 1 = %+v", list)
	}
	for _, q := range []string{"limit=0", "limit=101", "limit=x", "wait=61s", "wait=-1", "wait=NaN", "convo_id=%07"} {
		if resp := s.do("GET", "/v1/devices/dev1/welcomes?"+q, alice, "", nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("?%s: status %d, want 400", q, resp.StatusCode)
		}
	}
	if resp := s.do("GET", "/v1/devices/dev1/welcomes?wait=30", alice, "", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("?wait=30: status %d", resp.StatusCode)
	}

	_, err := a.Reject(ctx, "dev1", ids[0], "Whatever", "")
	wantCode(t, err, kpd.CodeBadRequest)
	_, err = a.Reject(ctx, "dev1", ids[0], kpd.ReasonOther, strings.Repeat("x", 1025))
	wantCode(t, err, kpd.CodeBadRequest)
	rej := must(a.Reject(ctx, "dev1", ids[0], kpd.ReasonNoMatchingKeyPackage, "lost the key"))(t)
	if rej.Ref != refs[0] {
		t.Fatalf("reject = %+v", rej)
	}
	_, err = a.Ack(ctx, "dev1", ids[0])
	wantCode(t, err, kpd.CodeConflict)
	st := must(b.WelcomeStatus(ctx, ids[0]))(t)
	if r := st.Recipients[0]; r.Status != kpd.DeliveryRejected || r.Reason != kpd.ReasonNoMatchingKeyPackage || r.Detail != "lost the key" {
		t.Fatalf("status after reject = %+v", r)
	}

	took := must(a.Take(ctx, "dev1", "two"))(t)
	if took.WelcomeID != ids[1] || took.Ref != refs[1] {
		t.Fatalf("take = %s, want the older Welcome of convo two %s", took.WelcomeID, ids[1])
	}
	if st := must(b.WelcomeStatus(ctx, ids[1]))(t); st.Recipients[0].Status != kpd.DeliveryAcked ||
		took.ConsumedAt.IsZero() || !took.ConsumedAt.Equal(st.Recipients[0].UpdatedAt) {
		t.Fatalf("taken Welcome is %s at %s, consumed at %s; want acked when consumed",
			st.Recipients[0].Status, st.Recipients[0].UpdatedAt, took.ConsumedAt)
	}
	_, err = a.Take(ctx, "dev1", "one")
	wantCode(t, err, kpd.CodeNotFound)
	if took := must(a.Take(ctx, "dev1", ""))(t); took.WelcomeID != ids[2] {
		t.Fatalf("take = %s, want %s", took.WelcomeID, ids[2])
	}
	_, err = a.Take(ctx, "dev1", "")
	wantCode(t, err, kpd.CodeNotFound)
}

// TestOtherDIDs: another DID can neither read nor change a device's
// KeyPackages or Welcomes: the same device name is its own device, and a
// Welcome's status is its sender's alone.
func TestOtherDIDs(t *testing.T) {
	s := start(t)
	ctx := context.Background()
	a, b, c := s.as(alice), s.as(bob), s.as(carol)
	kp1, ref1 := s.keyPackage(1, alice+"#dev1", false)
	kp2, _ := s.keyPackage(1, alice+"#dev1", false)
	must(a.Publish(ctx, "dev1", [][]byte{kp1}))(t)
	must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	must(a.Publish(ctx, "dev1", [][]byte{kp2}))(t)
	bobs := must(b.PostWelcome(ctx, "c", s.welcome(s.suite(1), ref1)))(t)
	before := must(a.Inventory(ctx, "dev1", true))(t)

	_, err := b.Inventory(ctx, "dev1", true)
	wantCode(t, err, kpd.CodeNotFound)
	wantCode(t, b.DeleteDevice(ctx, "dev1"), kpd.CodeNotFound)
	_, err = b.Ack(ctx, "dev1", bobs.WelcomeID)
	wantCode(t, err, kpd.CodeNotFound)
	_, err = b.Reject(ctx, "dev1", bobs.WelcomeID, kpd.ReasonOther, "")
	wantCode(t, err, kpd.CodeNotFound)
	_, err = b.Take(ctx, "dev1", "")
	wantCode(t, err, kpd.CodeNotFound)
	if list, err := b.Welcomes(ctx, "dev1", client.ListOptions{}); err == nil && len(list) != 0 {
		t.Fatalf("bob sees alice's Welcomes: %+v", list)
	}
	b.DeleteKeyPackages(ctx, "dev1", nil)
	b.Sync(ctx, "dev1", []kpd.Ref{})

	// carol's Welcome status is hers alone.
	must(c.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	after := must(a.Inventory(ctx, "dev1", true))(t)
	var carolRef kpd.Ref
	for _, k := range after.KeyPackages {
		if k.State == kpd.StateClaimed && k.Ref != ref1 {
			carolRef = k.Ref
		}
	}
	carols := must(c.PostWelcome(ctx, "c", s.welcome(s.suite(1), carolRef)))(t)
	_, err = b.WelcomeStatus(ctx, carols.WelcomeID)
	wantCode(t, err, kpd.CodeNotFound)
	_, err = a.WelcomeStatus(ctx, carols.WelcomeID)
	wantCode(t, err, kpd.CodeNotFound)
	if st := must(c.WelcomeStatus(ctx, carols.WelcomeID))(t); len(st.Recipients) != 1 {
		t.Fatalf("carol's status = %+v", st)
	}

	// Alice's state is what bob's attempts left: only carol's claim changed it.
	if len(after.KeyPackages) != len(before.KeyPackages) {
		t.Fatalf("alice's KeyPackages changed: %+v -> %+v", before.KeyPackages, after.KeyPackages)
	}
	for i, k := range before.KeyPackages {
		if k.Ref == ref1 && after.KeyPackages[i].State != kpd.StateClaimed {
			t.Fatalf("bob changed %s: %+v", ref1, after.KeyPackages[i])
		}
	}
	list := must(a.Welcomes(ctx, "dev1", client.ListOptions{}))(t)
	if len(list) != 2 {
		t.Fatalf("alice's dev1 has %d pending Welcomes, want bob's and carol's", len(list))
	}
}

// TestAuthentication: /v1 needs a credential (401 with a Bearer challenge
// otherwise); the probes do not.
func TestAuthentication(t *testing.T) {
	s := start(t)
	for _, h := range []string{"", "Bearer not-a-did", "Basic " + alice} {
		resp := s.do("GET", "/v1/devices", "", "", nil, "Authorization", h)
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("Authorization %q: status %d, WWW-Authenticate %q", h, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	_, err := client.New(s.URL, "").Devices(context.Background())
	wantCode(t, err, kpd.CodeUnauthorized)
	// Authentication comes before validating the request.
	resp := s.do("POST", "/v1/devices/bad!/key-packages", "", "application/json", []byte(`{`))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated bad request: status %d, want 401", resp.StatusCode)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if resp := s.do("GET", path, "", "", nil); resp.StatusCode != http.StatusOK {
			t.Errorf("%s without credentials: status %d", path, resp.StatusCode)
		}
	}
}

// TestTokenAuthentication runs a token-auth server: a stored token
// authenticates its DID, anything else is Unauthorized.
func TestTokenAuthentication(t *testing.T) {
	s := start(t, func(o *options) { o.tokenAuth = true })
	ctx := context.Background()
	tok, hash, err := auth.GenerateToken()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.PutToken(ctx, kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: alice, CreatedAt: s.now}); err != nil {
		t.Fatal(err)
	}
	kp := fixture(t, 1).KeyPackages["alice_dev1"]
	pub := must(client.New(s.URL, tok).Publish(ctx, "dev1", [][]byte{kp.Message}))(t)
	if pub.Results[0].Ref != kp.Ref() {
		t.Fatalf("publish with a token: %+v", pub.Results)
	}
	for _, bad := range []string{tok + "x", alice, ""} {
		_, err := client.New(s.URL, bad).Devices(ctx)
		wantCode(t, err, kpd.CodeUnauthorized)
	}
	if devs := must(client.New(s.URL, tok).Devices(ctx))(t); len(devs) != 1 {
		t.Fatalf("devices = %+v", devs)
	}
}

// TestRequestValidation: malformed requests are 400 BadRequest with a
// detail, unknown routes 404, wrong methods 405 with Allow.
func TestRequestValidation(t *testing.T) {
	s := start(t)
	kp := fixture(t, 1).KeyPackages["alice_dev1"].Message
	for _, c := range []struct {
		name, method, path, ctype, body string
		status                          int
	}{
		{"unknown field", "POST", "/v1/devices/dev1/key-packages", "application/json", `{"key_package":["` + b64(kp) + `"]}`, 400},
		{"not JSON", "POST", "/v1/devices/dev1/key-packages", "application/json", `{"key_packages":`, 400},
		{"two values", "POST", "/v1/devices/dev1/key-packages", "application/json", `{"key_packages":["` + b64(kp) + `"]} {}`, 400},
		{"empty body", "POST", "/v1/devices/dev1/key-packages", "application/json", ``, 400},
		{"no KeyPackages", "POST", "/v1/devices/dev1/key-packages", "application/json", `{"key_packages":[]}`, 400},
		{"not base64", "POST", "/v1/devices/dev1/key-packages", "application/json", `{"key_packages":["***"]}`, 400},
		{"number for bytes", "POST", "/v1/devices/dev1/key-packages", "application/json", `{"key_packages":[7]}`, 400},
		{"a form, read as JSON", "POST", "/v1/devices/dev1/key-packages", "application/x-www-form-urlencoded", `key_packages=` + b64(kp), 400},
		{"bad device", "POST", "/v1/devices/dev!1/key-packages", "application/json", `{"key_packages":["` + b64(kp) + `"]}`, 400},
		{"long device", "GET", "/v1/devices/" + strings.Repeat("d", 65) + "/key-packages", "", ``, 400},
		{"bad list flag", "GET", "/v1/devices/dev1/key-packages?list=maybe", "", ``, 400},
		{"bad welcome id", "GET", "/v1/welcomes/xyz", "", ``, 400},
		{"unknown welcome", "GET", "/v1/welcomes/" + strings.Repeat("0", 32), "", ``, 404},
		{"unknown device", "GET", "/v1/devices/nope/key-packages", "", ``, 404},
		{"ack unknown", "POST", "/v1/devices/dev1/welcomes/" + strings.Repeat("0", 32) + "/ack", "", ``, 404},
		{"unknown route", "GET", "/v1/nothing", "", ``, 404},
		{"suite out of range", "POST", "/v1/key-packages/claim", "application/json", `{"cipher_suite":70000,"targets":[{"did":"` + bob + `"}]}`, 400},
		{"wrong method", "PUT", "/v1/devices/dev1/key-packages", "", ``, 405},
	} {
		resp := s.do(c.method, c.path, alice, c.ctype, []byte(c.body))
		body, _ := io.ReadAll(resp.Body)
		var p struct {
			Type   string   `json:"type"`
			Title  string   `json:"title"`
			Status int      `json:"status"`
			Detail string   `json:"detail"`
			Code   kpd.Code `json:"code"`
		}
		if err := json.Unmarshal(body, &p); err != nil || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: not a problem document (%s): %s", c.name, resp.Header.Get("Content-Type"), body)
			continue
		}
		if resp.StatusCode != c.status || p.Status != c.status || p.Type != "about:blank" || p.Title != http.StatusText(c.status) || p.Detail == "" || p.Code == "" {
			t.Errorf("%s: status %d, problem %+v; want %d", c.name, resp.StatusCode, p, c.status)
		}
	}
	resp := s.do("DELETE", "/v1/devices", alice, "", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Errorf("DELETE /v1/devices: status %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if _, err := s.as(alice).Inventory(context.Background(), "dev1", false); !errors.As(err, new(*client.Error)) {
		t.Fatalf("nothing may have been stored: %v", err)
	}
}

// TestBase64Variants: JSON byte fields accept standard, unpadded and
// URL-safe base64, and responses send standard base64.
func TestBase64Variants(t *testing.T) {
	s := start(t)
	fx := fixture(t, 1)
	for i, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		name := []string{"alice_dev1", "alice_dev2", "alice_last_resort", "alice_dev1"}[i]
		kp := fx.KeyPackages[name]
		resp := s.do("POST", "/v1/devices/dev1/key-packages", alice, "application/json",
			[]byte(`{"key_packages":["`+enc.EncodeToString(kp.Message)+`"]}`))
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(kp.RefHex)) {
			t.Fatalf("encoding %d: status %d: %s", i, resp.StatusCode, body)
		}
	}
	must(s.as(bob).Claim(context.Background(), client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	resp := s.do("POST", "/v1/key-packages/claim", bob, "application/json", []byte(`{"cipher_suite":1,"targets":[{"did":"`+alice+`"}]}`))
	var raw struct {
		KeyPackages []struct {
			KeyPackage string `json:"key_package"`
		} `json:"key_packages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil || len(raw.KeyPackages) != 1 {
		t.Fatalf("claim: %v %+v", err, raw)
	}
	if got, err := base64.StdEncoding.DecodeString(raw.KeyPackages[0].KeyPackage); err != nil || len(got) == 0 {
		t.Fatalf("key_package %q is not standard base64: %v", raw.KeyPackages[0].KeyPackage, err)
	}
}
