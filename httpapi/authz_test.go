package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"testing"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/client"
)

// TestAuthorizationMatrix sends every /v1 route as the owner, as another
// DID, with no credential and with a bad one (token authentication). Only
// the owner's request may change or reveal the owner's state: after the
// three others, alice's KeyPackages, pending Welcomes and the sender's
// Welcome status are exactly as before.
func TestAuthorizationMatrix(t *testing.T) {
	s := start(t, func(o *options) { o.tokenAuth = true })
	ctx := context.Background()
	token := func(did string) string {
		tok, hash, err := auth.GenerateToken()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.db.PutToken(ctx, kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: did, CreatedAt: s.now}); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	aliceTok, bobTok, carolTok := token(alice), token(bob), token(carol)
	a, b := client.New(s.URL, aliceTok), client.New(s.URL, bobTok)

	// Alice's dev1 has five KeyPackages; bob claims three and sends a
	// Welcome for each (one to ack, one to reject, one to take).
	var refs []kpd.Ref
	var kps [][]byte
	for range 5 {
		kp, ref := s.keyPackage(1, alice+"#dev1", false)
		kps, refs = append(kps, kp), append(refs, ref)
	}
	must(a.Publish(ctx, "dev1", kps[:4]))(t)
	welcomeIDs := make([]string, 3)
	for i := range welcomeIDs {
		must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
		welcomeIDs[i] = must(b.PostWelcome(ctx, fmt.Sprintf("convo-%d", i), s.welcome(s.suite(1), refs[i])))(t).WelcomeID
	}
	// A Welcome bob may post in the matrix: for a KeyPackage he claims now.
	must(b.Claim(ctx, client.ClaimRequest{CipherSuite: 1, Targets: []kpd.ClaimTarget{{DID: alice}}}))(t)
	freshWelcome := s.welcome(s.suite(1), refs[3])

	body := func(v any) []byte {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	const dev = "/v1/devices/dev1"
	routes := []struct {
		method, path string
		body         []byte
		owner        string // whose request is the owner's: alice, or bob for sender routes
		ownerStatus  int
		otherStatus  int
	}{
		{"GET", dev + "/key-packages?list=1", nil, aliceTok, 200, 404},
		{"POST", dev + "/key-packages", body(map[string]any{"key_packages": [][]byte{kps[4]}}), aliceTok, 200, 422},
		{"POST", dev + "/key-packages/sync", body(map[string]any{"refs": refs}), aliceTok, 200, 404},
		{"DELETE", dev + "/key-packages", body(map[string]any{"refs": []kpd.Ref{refs[4]}}), aliceTok, 200, 404},
		{"GET", "/v1/devices", nil, aliceTok, 200, 200},
		{"GET", dev + "/welcomes", nil, aliceTok, 200, 404},
		{"GET", "/v1/welcomes/" + welcomeIDs[0], nil, bobTok, 200, 404},
		{"POST", dev + "/welcomes/" + welcomeIDs[0] + "/ack", nil, aliceTok, 200, 404},
		{"POST", dev + "/welcomes/" + welcomeIDs[1] + "/reject", body(map[string]any{"reason": "Other"}), aliceTok, 200, 404},
		{"POST", dev + "/welcomes/take?convo_id=convo-2", nil, aliceTok, 200, 404},
		{"POST", "/v1/welcomes", body(map[string]any{"convo_id": "c", "welcome": freshWelcome}), bobTok, 201, 422},
		{"POST", "/v1/key-packages/claim", body(map[string]any{"cipher_suite": 1, "targets": []map[string]string{{"did": bob}}}), aliceTok, 200, 200},
		{"DELETE", dev, nil, aliceTok, 204, 404},
	}

	send := func(method, path, authz string, body []byte) (int, string) {
		t.Helper()
		resp := s.do(method, path, "", "application/json", body, "Authorization", authz)
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	// state is everything of alice's and of bob's Welcome statuses that a
	// non-owner request must not change.
	state := func() string {
		t.Helper()
		var out []any
		if inv, err := a.Inventory(ctx, "dev1", true); err == nil {
			out = append(out, inv)
		}
		if list, err := a.Welcomes(ctx, "dev1", client.ListOptions{}); err == nil {
			out = append(out, list)
		}
		for _, id := range welcomeIDs {
			if st, err := b.WelcomeStatus(ctx, id); err == nil {
				out = append(out, st)
			}
		}
		raw, _ := json.Marshal(out)
		return string(raw)
	}

	for _, r := range routes {
		other := carolTok
		before := state()
		for _, c := range []struct {
			who, authz string
			want       int
		}{
			{"no credential", "", http.StatusUnauthorized},
			{"bad credential", "Bearer " + aliceTok + "x", http.StatusUnauthorized},
			{"another DID", "Bearer " + other, r.otherStatus},
		} {
			if got, raw := send(r.method, r.path, c.authz, r.body); got != c.want {
				t.Errorf("%s %s as %s: status %d, want %d: %s", r.method, r.path, c.who, got, c.want, raw)
			}
		}
		if after := state(); !reflect.DeepEqual(before, after) {
			t.Errorf("%s %s by others changed alice's state:\nbefore %s\nafter  %s", r.method, r.path, before, after)
		}
		if got, raw := send(r.method, r.path, "Bearer "+r.owner, r.body); got != r.ownerStatus {
			t.Errorf("%s %s as its owner: status %d, want %d: %s", r.method, r.path, got, r.ownerStatus, raw)
		}
	}
}
