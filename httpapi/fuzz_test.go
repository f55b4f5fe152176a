package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
)

// fuzzRoutes are every API route, with {device} and {welcome_id} filled in
// from the fuzzer's path segment.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/devices/{device}/key-packages"},
	{"GET", "/v1/devices/{device}/key-packages"},
	{"DELETE", "/v1/devices/{device}/key-packages"},
	{"POST", "/v1/devices/{device}/key-packages/sync"},
	{"GET", "/v1/devices"},
	{"DELETE", "/v1/devices/{device}"},
	{"POST", "/v1/key-packages/claim"},
	{"POST", "/v1/welcomes"},
	{"GET", "/v1/welcomes/{welcome_id}"},
	{"GET", "/v1/devices/{device}/welcomes"},
	{"POST", "/v1/devices/{device}/welcomes/{welcome_id}/ack"},
	{"POST", "/v1/devices/{device}/welcomes/{welcome_id}/reject"},
	{"POST", "/v1/devices/{device}/welcomes/take"},
	{"GET", "/readyz"},
}

// FuzzRequests sends arbitrary bodies (JSON or CBOR), path segments and
// query strings to every route of a server holding real state. Whatever
// the input: no 5xx, every error is a problem document whose code maps to
// its status, every success decodes in the negotiated encoding, and the
// store's invariants hold afterwards (checked when the server stops).
func FuzzRequests(f *testing.F) {
	s := start(f, func(o *options) { o.kv.NoSync = true })
	ctx := context.Background()
	kps := make([][]byte, 3)
	var refs []kpd.Ref
	for i := range kps {
		var ref kpd.Ref
		kps[i], ref = s.keyPackage(1, alice+"#dev1", i == 2)
		refs = append(refs, ref)
	}
	must(s.as(alice).Publish(ctx, "dev1", kps))(f)
	must(s.as(bob).Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(f)
	welcome := s.welcome(s.suite(1), refs[0])
	posted := must(s.as(bob).PostWelcome(ctx, "convo", welcome))(f)

	jsonBody := func(v any) []byte {
		b, _ := json.Marshal(v)
		return b
	}
	cborBody := func(v any) []byte {
		b, _ := cbor.Marshal(v)
		return b
	}
	for _, seed := range []struct {
		route   uint8
		segment string
		query   string
		cbor    bool
		body    []byte
	}{
		{0, "dev1", "", false, jsonBody(map[string]any{"key_packages": kps[:1]})},
		{0, "dev1", "", true, cborBody(map[string]any{"key_packages": kps[:1]})},
		{1, "dev1", "list=1", false, nil},
		{2, "dev1", "", false, jsonBody(map[string]any{"refs": refs[1:2]})},
		{3, "dev1", "", false, jsonBody(map[string]any{"refs": refs})},
		{6, "", "", false, jsonBody(map[string]any{"cipher_suite": 1, "targets": []map[string]any{{"did": alice, "devices": []string{"dev1"}}}})},
		{6, "", "", true, cborBody(map[string]any{"cipher_suite": "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", "targets": []map[string]any{{"did": alice}}, "all_or_nothing": true})},
		{7, "", "", false, jsonBody(map[string]any{"convo_id": "c", "welcome": welcome})},
		{8, posted.WelcomeID, "", false, nil},
		{9, "dev1", "convo_id=convo&limit=5&wait=0", false, nil},
		{10, posted.WelcomeID, "", false, nil},
		{11, posted.WelcomeID, "", false, jsonBody(map[string]any{"reason": "NoMatchingKeyPackage", "detail": "x"})},
		{12, "dev1", "convo_id=convo", false, nil},
		{0, "dev1/../x", "list=%zz", false, []byte(`{"key_packages": [`)},
	} {
		f.Add(seed.route, seed.segment, seed.query, seed.cbor, seed.body)
	}

	f.Fuzz(func(t *testing.T, route uint8, segment, query string, useCBOR bool, body []byte) {
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		// The ack, reject and status routes name a Welcome; the segment
		// fills both placeholders so the fuzzer reaches real records.
		path := strings.NewReplacer("{device}", url.PathEscape(segment), "{welcome_id}", url.PathEscape(segment)).Replace(r.path)
		if strings.Contains(r.path, "{welcome_id}") && strings.Contains(r.path, "{device}") {
			path = strings.Replace(r.path, "{device}", "dev1", 1)
			path = strings.Replace(path, "{welcome_id}", url.PathEscape(segment), 1)
		}
		if query != "" {
			path += "?" + query
		}
		req, err := http.NewRequest(r.method, "http://kpd.test"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		caller := alice
		if route&0x80 != 0 {
			caller = bob
		}
		req.Header.Set("Authorization", "Bearer "+caller)
		req.Header.Set("Content-Type", "application/json")
		if useCBOR {
			req.Header.Set("Content-Type", "application/cbor")
			req.Header.Set("Accept", "application/cbor")
		}
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, req)

		status, raw := rec.Code, rec.Body.Bytes()
		if status >= 500 {
			t.Fatalf("%s %s: status %d: %s", r.method, path, status, raw)
		}
		if status >= 400 {
			var p struct {
				Status int      `json:"status"`
				Code   kpd.Code `json:"code"`
			}
			if err := json.Unmarshal(raw, &p); err != nil || p.Status != status || p.Code == "" {
				t.Fatalf("%s %s: status %d with a body that is not a problem: %s", r.method, path, status, raw)
			}
			if want := httpapi.StatusOf(p.Code); want != status && status != http.StatusMethodNotAllowed {
				t.Fatalf("%s %s: status %d for code %s, which maps to %d", r.method, path, status, p.Code, want)
			}
			return
		}
		if len(raw) == 0 {
			return // 204
		}
		var v any
		switch ct := rec.Header().Get("Content-Type"); {
		case useCBOR && ct == "application/cbor":
			err = cbor.Unmarshal(raw, &v)
		case !useCBOR && strings.HasPrefix(ct, "application/json"):
			err = json.Unmarshal(raw, &v)
		default:
			t.Fatalf("%s %s: Content-Type %q for a request accepting CBOR=%v", r.method, path, ct, useCBOR)
		}
		if err != nil {
			t.Fatalf("%s %s: status %d with an undecodable body: %v", r.method, path, status, err)
		}
	})
}
