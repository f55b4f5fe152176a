package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/backup"
	"github.com/kpd-dir/kpd/httpapi"
	"github.com/kpd-dir/kpd/kv"
)

// tokenStore is what `kpd token` does to the tokens: on a database file
// that no server has open (kv.DB), or through the admin routes of a
// running server (adminTokens).
type tokenStore interface {
	// create makes a token for did and returns it with its description.
	create(ctx context.Context, did, label string) (string, kpd.Token, error)
	// list returns the tokens, of one DID or (did == "") all.
	list(ctx context.Context, did string) ([]kpd.Token, error)
	// revoke deletes the token with this ID; NotFound if none.
	revoke(ctx context.Context, id string) error
}

// tokenSynopses are the usage lines of the token subcommands.
var tokenSynopses = map[string]string{
	"create": "token create --did DID [--label NOTE] (--url URL --admin-token-file FILE | --db FILE [--create-db])",
	"list":   "token list [--did DID] (--url URL --admin-token-file FILE | --db FILE)",
	"revoke": "token revoke ID (--url URL --admin-token-file FILE | --db FILE)",
}

// tokenUsage is the help of `kpd token`.
var tokenUsage = "usage:\n" +
	"  kpd " + tokenSynopses["create"] + "\n" +
	"  kpd " + tokenSynopses["list"] + "\n" +
	"  kpd " + tokenSynopses["revoke"] + "\n\n" +
	"With --url the commands manage the tokens of a running server through its\n" +
	"admin routes; with --db they open a database file that no server has open.\n" +
	"kpd token SUBCOMMAND -h lists the flags.\n"

// token runs `kpd token create|list|revoke`. With --url the commands call
// the admin routes of a running server; without it they open the database
// file, which a running server holds locked: they then fail with a clear
// message while `kpd serve` runs on the same file.
func (m *Main) token(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, tokenUsage)
		return usageErrorf("token: want create, list or revoke")
	}
	sub, args := args[0], args[1:]
	synopsis, ok := tokenSynopses[sub]
	switch {
	case sub == "-h" || sub == "-help" || sub == "--help" || sub == "help":
		fmt.Fprint(m.Stdout, tokenUsage)
		return nil
	case !ok:
		fmt.Fprint(m.Stderr, tokenUsage)
		return usageErrorf("token: unknown subcommand %q: want create, list or revoke", sub)
	}
	fs := newFlagSet("token "+sub, m.Stderr, synopsis)
	dbPath := fs.String("db", "kpd.db", "database `file` when no --url is given (it must exist and not be in use)")
	baseURL := fs.String("url", "", "base `URL` of a running kpd whose admin routes manage the tokens, e.g. http://127.0.0.1:8080")
	var admin adminTokenFlags
	admin.register(fs, "the server's admin `token`, with --url")
	var did, label string
	var createDB bool
	switch sub {
	case "create":
		fs.StringVar(&did, "did", "", "the `DID` the token authenticates (required)")
		fs.StringVar(&label, "label", "", "a `note` to recognise the token by (kpd token list shows it)")
		fs.BoolVar(&createDB, "create-db", false, "create --db if it does not exist (for the first tokens, before the first kpd serve)")
	case "list":
		fs.StringVar(&did, "did", "", "list only this `DID`'s tokens")
	}
	positional, err := parseFlags(fs, args, m.Getenv)
	if err != nil {
		return err
	}
	var id string
	switch {
	case sub == "revoke" && len(positional) != 1:
		return usageErrorf("token revoke: want one token ID (as kpd token list shows it), got %d arguments", len(positional))
	case sub == "revoke":
		id = positional[0]
	case len(positional) > 0:
		return usageErrorf("token %s: unexpected argument %q: it takes only flags (kpd token %s -h lists them)", sub, positional[0], sub)
	}
	if sub == "create" && !kpd.ValidDID(did) {
		return usageErrorf("token create: --did %q is not a DID (did:<method>:<id>)", did)
	}

	var store tokenStore
	var where string // the database or server, for the output
	if *baseURL != "" {
		if err := checkURL(*baseURL); err != nil {
			return err
		}
		tok, err := admin.required("token " + sub)
		if err != nil {
			return err
		}
		a := newAdminTokens(*baseURL, tok)
		defer a.hc.CloseIdleConnections()
		store, where = a, "on the server at "+*baseURL
	} else {
		where = "in " + *dbPath
		if createDB {
			if err := dirMustExist("--db", *dbPath); err != nil {
				return err
			}
		} else if err := mustExist("--db", *dbPath, tokenDBHint(sub)); err != nil {
			return err
		}
		db, err := openDB(*dbPath, &kv.Options{Clock: m.Clock})
		if errors.Is(err, kv.ErrInUse) {
			return fmt.Errorf("%w; while kpd serve runs on it, manage its tokens with --url URL and --admin-token-file FILE (or KPD_ADMIN_TOKEN)", err)
		}
		if err != nil {
			return err
		}
		defer db.Close()
		store = localTokens{db: db, clock: m.Clock}
	}

	switch sub {
	case "create":
		tok, t, err := store.create(ctx, did, label)
		if err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "token %s for %s created %s; it is shown only once:\n", t.ID, t.DID, where)
		fmt.Fprintln(m.Stdout, tok)
	case "list":
		toks, err := store.list(ctx, did)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tDID\tCREATED\tLABEL")
		for _, t := range toks {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", t.ID, t.DID, t.CreatedAt.UTC().Format(time.RFC3339), t.Label)
		}
		return w.Flush()
	case "revoke":
		err := store.revoke(ctx, id)
		if kpd.ErrorCode(err) == kpd.CodeNotFound {
			return fmt.Errorf("%w (kpd token list shows the token IDs)", err)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "token %s revoked %s\n", id, where)
	}
	return nil
}

// tokenDBHint says what to do when the --db of `kpd token sub` does not
// exist.
func tokenDBHint(sub string) string {
	hint := "give --db (or KPD_DB) the server's database file, or --url to manage a running server's tokens"
	if sub == "create" {
		hint += "; to start a new database, add --create-db"
	}
	return hint
}

// localTokens manages the tokens in a database file.
type localTokens struct {
	db    *kv.DB
	clock kpd.Clock
}

func (l localTokens) create(ctx context.Context, did, label string) (string, kpd.Token, error) {
	tok, hash, err := auth.GenerateToken()
	if err != nil {
		return "", kpd.Token{}, err
	}
	t := kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: did, Label: label, CreatedAt: l.clock.Now().UTC()}
	if err := l.db.PutToken(ctx, t); err != nil {
		return "", kpd.Token{}, err
	}
	return tok, t, nil
}

func (l localTokens) list(ctx context.Context, did string) ([]kpd.Token, error) {
	return l.db.Tokens(ctx, did)
}

func (l localTokens) revoke(ctx context.Context, id string) error {
	return l.db.RevokeToken(ctx, id)
}

// adminRequestTimeout bounds one call of `kpd token --url`.
const adminRequestTimeout = 30 * time.Second

// maxAdminResponseBytes bounds the answer of an admin token route.
const maxAdminResponseBytes = 16 << 20

// adminTokens manages the tokens through the admin routes of a running
// server.
type adminTokens struct {
	base, token string
	hc          *http.Client
}

func newAdminTokens(baseURL, token string) *adminTokens {
	return &adminTokens{
		base:  strings.TrimSuffix(baseURL, "/"),
		token: token,
		hc:    &http.Client{Timeout: adminRequestTimeout, Transport: http.DefaultTransport.(*http.Transport).Clone()},
	}
}

// adminToken is a token as the admin routes describe it.
type adminToken struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	DID       string    `json:"did"`
	Label     string    `json:"label"`
	CreatedAt time.Time `json:"created_at"`
}

func (t adminToken) token() kpd.Token {
	return kpd.Token{ID: t.ID, DID: t.DID, Label: t.Label, CreatedAt: t.CreatedAt}
}

func (a *adminTokens) create(ctx context.Context, did, label string) (string, kpd.Token, error) {
	body, err := json.Marshal(map[string]string{"did": did, "label": label})
	if err != nil {
		return "", kpd.Token{}, err
	}
	var out adminToken
	if err := a.do(ctx, http.MethodPost, httpapi.AdminTokensPath, body, http.StatusCreated, &out); err != nil {
		return "", kpd.Token{}, adminRoutesOff(a.base, err)
	}
	if out.Token == "" {
		return "", kpd.Token{}, fmt.Errorf("POST %s%s: the answer has no token", a.base, httpapi.AdminTokensPath)
	}
	return out.Token, out.token(), nil
}

func (a *adminTokens) list(ctx context.Context, did string) ([]kpd.Token, error) {
	path := httpapi.AdminTokensPath
	if did != "" {
		path += "?" + url.Values{"did": {did}}.Encode()
	}
	var out struct {
		Tokens []adminToken `json:"tokens"`
	}
	if err := a.do(ctx, http.MethodGet, path, nil, http.StatusOK, &out); err != nil {
		return nil, adminRoutesOff(a.base, err)
	}
	toks := make([]kpd.Token, len(out.Tokens))
	for i, t := range out.Tokens {
		toks[i] = t.token()
	}
	return toks, nil
}

func (a *adminTokens) revoke(ctx context.Context, id string) error {
	err := a.do(ctx, http.MethodDelete, httpapi.AdminTokensPath+"/"+url.PathEscape(id), nil, http.StatusNoContent, nil)
	return adminRoutesOff(a.base, err)
}

// do sends one admin request with body (JSON, nil for none) and decodes
// the answer into out when its status is want. Any other status is an
// error: a *kpd.Error with the code of its problem document, if it has one.
func (a *adminTokens) do(ctx context.Context, method, path string, body []byte, want int, out any) error {
	endpoint := a.base + path
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, endpoint, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, endpoint, err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, endpoint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponseBytes))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, endpoint, err)
	}
	if resp.StatusCode != want {
		return backup.ProblemError(method, endpoint, resp.Status, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, endpoint, err)
	}
	return nil
}
