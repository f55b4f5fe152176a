package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/internal/testkit"
)

// adminTokenDo sends an admin request with a JSON body (nil for none).
func adminTokenDo(t *testing.T, method, url, authorization string, body any) *http.Response {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

type adminTokenBody struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	DID       string    `json:"did"`
	Label     string    `json:"label"`
	CreatedAt time.Time `json:"created_at"`
}

// TestAdminTokens creates, lists and revokes an API token through the admin
// routes of a server whose token-auth API shares the database: the new
// token authenticates at once, and not after it is revoked.
func TestAdminTokens(t *testing.T) {
	api := start(t, func(o *options) { o.tokenAuth = true })
	logs := &testkit.SyncBuffer{}
	admin := httptest.NewServer(httpapi.NewAdmin(httpapi.AdminConfig{
		Token:     adminTestToken,
		Snapshots: api.db,
		Tokens:    api.db,
		Clock:     func() time.Time { return adminTestNow },
		Logger:    zerolog.New(logs),
	}))
	t.Cleanup(admin.Close)
	tokensURL := admin.URL + httpapi.AdminTokensPath
	bearer := "Bearer " + adminTestToken
	ctx := context.Background()

	// Every token route needs the admin token.
	for _, route := range []struct{ method, url string }{
		{http.MethodPost, tokensURL}, {http.MethodGet, tokensURL}, {http.MethodDelete, tokensURL + "/0123456789abcdef"},
	} {
		for _, authz := range []string{"", "Bearer " + adminTestToken + "x", "Bearer kpd_notanadmintoken"} {
			resp := adminTokenDo(t, route.method, route.url, authz, map[string]string{"did": alice})
			adminWantProblem(t, resp, http.StatusUnauthorized, kpd.CodeUnauthorized)
		}
	}
	if toks, err := api.db.Tokens(ctx, ""); err != nil || len(toks) != 0 {
		t.Fatalf("tokens after unauthorized requests: %v, %v", toks, err)
	}

	// A bad DID or body is a BadRequest.
	for _, body := range []any{map[string]string{"did": "alice"}, map[string]string{"label": "x"},
		map[string]string{"did": alice, "extra": "x"}} {
		adminWantProblem(t, adminTokenDo(t, http.MethodPost, tokensURL, bearer, body), http.StatusBadRequest, kpd.CodeBadRequest)
	}
	adminWantProblem(t, adminTokenDo(t, http.MethodPost, tokensURL, bearer, nil), http.StatusBadRequest, kpd.CodeBadRequest)
	adminWantProblem(t, adminTokenDo(t, http.MethodGet, tokensURL+"?did=nope", bearer, nil), http.StatusBadRequest, kpd.CodeBadRequest)

	// Create.
	resp := adminTokenDo(t, http.MethodPost, tokensURL, bearer, map[string]string{"did": alice, "label": "laptop"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: status %d", resp.StatusCode)
	}
	var created adminTokenBody
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Token, "kpd_") || created.ID == "" || created.DID != alice || created.Label != "laptop" ||
		!created.CreatedAt.Equal(adminTestNow) {
		t.Fatalf("create answered %+v", created)
	}
	if strings.Contains(logs.String(), created.Token) {
		t.Errorf("the new token is in the logs:\n%s", logs)
	}

	// The token authenticates Alice on the API at once.
	if _, err := client.New(api.URL, created.Token).Devices(ctx); err != nil {
		t.Fatalf("API call with the new token: %v", err)
	}
	if strings.Contains(api.logs.String(), created.Token) {
		t.Errorf("the token is in the API logs")
	}

	// List, all and by DID, without the secret.
	adminTokenDo(t, http.MethodPost, tokensURL, bearer, map[string]string{"did": bob})
	for query, want := range map[string]int{"": 2, "?did=" + alice: 1, "?did=" + carol: 0} {
		resp := adminTokenDo(t, http.MethodGet, tokensURL+query, bearer, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("list%s: status %d", query, resp.StatusCode)
		}
		var raw bytes.Buffer
		raw.ReadFrom(resp.Body)
		if strings.Contains(raw.String(), created.Token) || strings.Contains(raw.String(), "hash") || strings.Contains(raw.String(), `"token"`) {
			t.Errorf("list%s shows a secret: %s", query, raw.String())
		}
		var list struct {
			Tokens []adminTokenBody `json:"tokens"`
		}
		if err := json.Unmarshal(raw.Bytes(), &list); err != nil || list.Tokens == nil {
			t.Fatalf("list%s: %v: %s", query, err, raw.String())
		}
		if len(list.Tokens) != want {
			t.Errorf("list%s: %d tokens, want %d", query, len(list.Tokens), want)
		}
		if query == "?did="+alice && len(list.Tokens) == 1 {
			if got := list.Tokens[0]; got.ID != created.ID || got.DID != alice || got.Label != "laptop" || !got.CreatedAt.Equal(adminTestNow) {
				t.Errorf("listed %+v, want %+v", got, created)
			}
		}
	}

	// Revoke: 204, the token no longer authenticates, and again is 404.
	resp = adminTokenDo(t, http.MethodDelete, tokensURL+"/"+created.ID, bearer, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke: status %d", resp.StatusCode)
	}
	if _, err := client.New(api.URL, created.Token).Devices(ctx); err == nil {
		t.Fatal("the revoked token still authenticates")
	} else {
		wantCode(t, err, kpd.CodeUnauthorized)
	}
	adminWantProblem(t, adminTokenDo(t, http.MethodDelete, tokensURL+"/"+created.ID, bearer, nil), http.StatusNotFound, kpd.CodeNotFound)
}

// TestAdminTokensOffWithoutStore: without AdminConfig.Tokens the token
// routes do not exist.
func TestAdminTokensOffWithoutStore(t *testing.T) {
	url, _, _ := adminTestServer(t, adminTestToken, "")
	adminWantProblem(t, testkit.Do(t, http.MethodGet, url+httpapi.AdminTokensPath, "Bearer "+adminTestToken),
		http.StatusNotFound, kpd.CodeNotFound)
}
