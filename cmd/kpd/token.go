package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/auth"
	"github.com/kpd-dir/kpd/kv"
)

// token runs `kpd token create|list|revoke`. Tokens live in the database
// file, which a running server holds locked: these commands fail with a
// clear message while `kpd serve` runs on the same file.
func (m *Main) token(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageErrorf("token: want create, list or revoke")
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("token "+sub, m.Stderr, "token "+sub+" [flags]")
	dbPath := fs.String("db", "kpd.db", "database `file`")
	var did, label string
	switch sub {
	case "create":
		fs.StringVar(&did, "did", "", "the `DID` the token authenticates (required)")
		fs.StringVar(&label, "label", "", "a note to recognise the token by in `kpd token list`")
	case "list":
		fs.StringVar(&did, "did", "", "list only this `DID`'s tokens")
	case "revoke":
	default:
		return usageErrorf("token: unknown subcommand %q: want create, list or revoke", sub)
	}
	if err := parseFlags(fs, args, m.Getenv); err != nil {
		return err
	}
	want := 0
	if sub == "revoke" {
		want = 1
	}
	if fs.NArg() != want {
		return usageErrorf("token %s: want %d argument(s), got %d", sub, want, fs.NArg())
	}
	if sub == "create" && !kpd.ValidDID(did) {
		return usageErrorf("token create: --did %q is not a DID (did:<method>:<id>)", did)
	}

	db, err := kv.Open(*dbPath, &kv.Options{Clock: m.Clock})
	if err != nil {
		return err
	}
	defer db.Close()

	switch sub {
	case "create":
		tok, hash, err := auth.GenerateToken()
		if err != nil {
			return err
		}
		t := kpd.Token{ID: auth.TokenID(hash), Hash: hash, DID: did, Label: label, CreatedAt: m.Clock.Now().UTC()}
		if err := db.PutToken(ctx, t); err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "token %s for %s created; it is shown only once:\n", t.ID, did)
		fmt.Fprintln(m.Stdout, tok)
	case "list":
		toks, err := db.Tokens(ctx, did)
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
		if err := db.RevokeToken(ctx, fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "token %s revoked\n", fs.Arg(0))
	}
	return nil
}
