package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/gorilla/mux"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
)

// AdminTokensPath is the route of the API tokens: POST creates one, GET
// lists them and DELETE AdminTokensPath/{id} revokes one.
const AdminTokensPath = "/v1/admin/tokens"

// maxAdminTokenBody bounds the body of POST /v1/admin/tokens.
const maxAdminTokenBody = 16 << 10

// AdminTokenStore keeps the API tokens of token authentication; *kv.DB
// implements it.
type AdminTokenStore interface {
	// PutToken stores an API token (by its hash).
	PutToken(ctx context.Context, t kpd.Token) error
	// Tokens lists the stored tokens, of one DID or (did == "") all.
	Tokens(ctx context.Context, did string) ([]kpd.Token, error)
	// RevokeToken deletes the token with this ID; NotFound if none.
	RevokeToken(ctx context.Context, id string) error
}

// adminTokenRequest is the body of POST /v1/admin/tokens.
type adminTokenRequest struct {
	DID   string `json:"did"`
	Label string `json:"label,omitempty"`
}

// adminTokenInfo describes a stored token, never its secret or hash.
type adminTokenInfo struct {
	ID        string    `json:"id"`
	DID       string    `json:"did"`
	Label     string    `json:"label"`
	CreatedAt time.Time `json:"created_at"`
}

// adminTokenCreated is the answer of POST /v1/admin/tokens: the new token,
// shown only this once, and its description.
type adminTokenCreated struct {
	Token string `json:"token"`
	adminTokenInfo
}

// adminTokenList is the answer of GET /v1/admin/tokens.
type adminTokenList struct {
	Tokens []adminTokenInfo `json:"tokens"`
}

func tokenInfo(t kpd.Token) adminTokenInfo {
	return adminTokenInfo{ID: t.ID, DID: t.DID, Label: t.Label, CreatedAt: t.CreatedAt}
}

// registerTokens serves the token routes when cfg has a token store.
func (a *adminServer) registerTokens(cfg AdminConfig) {
	if cfg.Tokens == nil {
		return
	}
	store, clock := cfg.Tokens, cfg.Clock
	a.handlePublic(http.MethodPost, AdminTokensPath, a.authorized(func(w http.ResponseWriter, r *http.Request) error {
		r.Body = http.MaxBytesReader(w, r.Body, maxAdminTokenBody)
		var req adminTokenRequest
		if err := decode(r, &req); err != nil {
			return err
		}
		if !kpd.ValidDID(req.DID) {
			return kpd.Errorf(kpd.CodeBadRequest, "did %q is not a DID (did:<method>:<id>)", req.DID)
		}
		tok, hash, err := auth.GenerateToken()
		if err != nil {
			return err
		}
		t := kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: req.DID, Label: req.Label, CreatedAt: clock.Now().UTC()}
		if err := store.PutToken(r.Context(), t); err != nil {
			return err
		}
		a.log.Info().Str("request_id", infoFrom(r.Context()).id).Str("token_id", t.ID).Str("did", t.DID).Msg("admin: token created")
		return a.respond(w, r, http.StatusCreated, adminTokenCreated{Token: tok, adminTokenInfo: tokenInfo(t)})
	}))
	a.handlePublic(http.MethodGet, AdminTokensPath, a.authorized(func(w http.ResponseWriter, r *http.Request) error {
		did := r.URL.Query().Get("did")
		if did != "" && !kpd.ValidDID(did) {
			return kpd.Errorf(kpd.CodeBadRequest, "did %q is not a DID (did:<method>:<id>)", did)
		}
		toks, err := store.Tokens(r.Context(), did)
		if err != nil {
			return err
		}
		resp := adminTokenList{Tokens: make([]adminTokenInfo, 0, len(toks))}
		for _, t := range toks {
			resp.Tokens = append(resp.Tokens, tokenInfo(t))
		}
		return a.respond(w, r, http.StatusOK, resp)
	}))
	a.handlePublic(http.MethodDelete, AdminTokensPath+"/{id}", a.authorized(func(w http.ResponseWriter, r *http.Request) error {
		id := mux.Vars(r)["id"]
		if err := store.RevokeToken(r.Context(), id); err != nil {
			return err
		}
		a.log.Info().Str("request_id", infoFrom(r.Context()).id).Str("token_id", id).Msg("admin: token revoked")
		w.WriteHeader(http.StatusNoContent)
		return nil
	}))
}
