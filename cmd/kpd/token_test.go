package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
)

// TestTokenCommandsOnRunningServer manages tokens with --url while `kpd
// serve` holds the database: a created token authenticates at once, the
// list matches the one read from the file afterwards, and a revoked token
// is refused.
func TestTokenCommandsOnRunningServer(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "kpd.db")
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(backupTestToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, _, _ := newMain(nil, fx.now)
	srvLog := &testkit.SyncBuffer{}
	srv.Stderr = srvLog
	url := startServe(t, srv, "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "token", "--admin-token", backupTestToken)

	run := func(env map[string]string, args ...string) (string, string, error) {
		m, stdout, stderr := newMain(env, fx.now)
		err := m.Run(ctx, args)
		m.Close()
		return stdout.String(), stderr.String(), err
	}

	out, msg, err := run(nil, "token", "create", "--url", url, "--admin-token-file", tokenFile, "--did", aliceDID, "--label", "laptop")
	if err != nil {
		t.Fatalf("token create --url: %v\n%s", err, msg)
	}
	token := strings.TrimSpace(out)
	if !strings.HasPrefix(token, "kpd_") || !strings.Contains(msg, "for "+aliceDID+" created on the server at "+url+"; it is shown only once") {
		t.Fatalf("token create --url: stdout %q, stderr %q", out, msg)
	}
	if _, err := client.New(url, token).Publish(ctx, "dev1", [][]byte{fx.keyPackage}); err != nil {
		t.Fatalf("publish with the new token: %v", err)
	}

	// The admin token also comes from KPD_ADMIN_TOKEN.
	remoteList, msg, err := run(map[string]string{"KPD_ADMIN_TOKEN": backupTestToken}, "token", "list", "--url", url)
	if err != nil {
		t.Fatalf("token list --url: %v\n%s", err, msg)
	}
	lines := strings.Split(strings.TrimSpace(remoteList), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[1], aliceDID) ||
		!strings.Contains(lines[1], "laptop") || strings.Contains(remoteList, token) {
		t.Fatalf("token list --url output wrong (or shows the token):\n%s", remoteList)
	}
	id := strings.Fields(lines[1])[0]

	// Without the admin token, or with a wrong one, nothing is done.
	if _, _, err := run(nil, "token", "list", "--url", url); exitCode(err) != 2 {
		t.Errorf("token list --url without an admin token: err = %v, want a usage error", err)
	}
	if _, _, err := run(nil, "token", "revoke", "--url", url, "--admin-token", "not-the-admin-token", id); kpd.ErrorCode(err) != kpd.CodeUnauthorized || exitCode(err) != 1 {
		t.Errorf("token revoke with a wrong admin token: err = %v, want Unauthorized", err)
	}

	if _, msg, err := run(nil, "token", "revoke", "--url", url, "--admin-token-file", tokenFile, id); err != nil || !strings.Contains(msg, "token "+id+" revoked") {
		t.Fatalf("token revoke --url %s: %v\n%s", id, err, msg)
	}
	var cerr *client.Error
	if _, err := client.New(url, token).Devices(ctx); !errors.As(err, &cerr) || cerr.Code != kpd.CodeUnauthorized {
		t.Fatalf("revoked token: err = %v, want Unauthorized", err)
	}
	if _, _, err := run(nil, "token", "revoke", "--url", url, "--admin-token-file", tokenFile, id); kpd.ErrorCode(err) != kpd.CodeNotFound || exitCode(err) != 1 {
		t.Errorf("revoking twice: err = %v, want NotFound", err)
	}
	if strings.Contains(srvLog.String(), token) || strings.Contains(srvLog.String(), backupTestToken) {
		t.Errorf("the server log shows a token:\n%s", srvLog)
	}

	// Both modes print the same list.
	if _, msg, err := run(nil, "token", "create", "--url", url, "--admin-token-file", tokenFile, "--did", aliceDID, "--label", "phone"); err != nil {
		t.Fatalf("token create --url: %v\n%s", err, msg)
	}
	remoteList, _, err = run(nil, "token", "list", "--url", url, "--admin-token-file", tokenFile, "--did", aliceDID)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	localList, _, err := run(nil, "token", "list", "--db", dbPath, "--did", aliceDID)
	if err != nil {
		t.Fatal(err)
	}
	if localList != remoteList || !strings.Contains(localList, "phone") {
		t.Errorf("token list differs between --url:\n%s\nand --db:\n%s", remoteList, localList)
	}
}

// The token commands refuse a --db that does not exist instead of creating
// an empty database that no server reads; --create-db creates it, and the
// output names the file.
func TestTokenCommandsRefuseMissingDatabase(t *testing.T) {
	fx := loadFixture(t)
	dbPath := filepath.Join(t.TempDir(), "typo.db")
	for _, args := range [][]string{
		{"token", "create", "--did", aliceDID, "--db", dbPath},
		{"token", "list", "--db", dbPath},
		{"token", "revoke", "0123456789abcdef", "--db", dbPath},
	} {
		stderr, err := runCmd(nil, fx.now, args...)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), dbPath) {
			t.Errorf("kpd %v: err = %v, want exit status 1 naming %s", args, err, dbPath)
		}
		if _, serr := os.Stat(dbPath); serr == nil {
			t.Fatalf("kpd %v created %s\n%s", args, dbPath, stderr)
		}
	}
	_, err := runCmd(nil, fx.now, "token", "create", "--did", aliceDID, "--db", dbPath)
	if err == nil || !strings.Contains(err.Error(), "--create-db") {
		t.Errorf("token create on a missing --db: err = %v, want a hint at --create-db", err)
	}

	msg := wantCmd(t, fx.now, "token", "create", "--did", aliceDID, "--db", dbPath, "--create-db")
	if !strings.Contains(msg, "created in "+dbPath) {
		t.Errorf("token create output %q does not name the database %s", msg, dbPath)
	}
	msg = wantCmd(t, fx.now, "token", "create", "--did", aliceDID, "--db", dbPath)
	if !strings.Contains(msg, "created in "+dbPath) {
		t.Errorf("token create output %q does not name the database %s", msg, dbPath)
	}
}

// Flags may follow the token ID, as docs/CONFIGURATION.md writes
// `kpd token revoke ID --db FILE`; -h of `kpd token` and of its
// subcommands shows their usage.
func TestTokenArgumentsAndHelp(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "kpd.db")
	wantCmd(t, fx.now, "token", "create", "--did", aliceDID, "--db", dbPath, "--create-db", "--label", "laptop")
	m, stdout, _ := newMain(nil, fx.now)
	if err := m.Run(ctx, []string{"token", "list", "--db", dbPath}); err != nil {
		t.Fatal(err)
	}
	id := strings.Fields(strings.Split(stdout.String(), "\n")[1])[0]

	if msg := wantCmd(t, fx.now, "token", "revoke", id, "--db", dbPath); !strings.Contains(msg, "token "+id+" revoked") {
		t.Errorf("token revoke ID --db FILE: output %q", msg)
	}
	if _, err := runCmd(nil, fx.now, "token", "revoke", id, "--db", dbPath, "extra"); exitCode(err) != 2 {
		t.Errorf("token revoke with two IDs: err = %v, want exit status 2", err)
	}

	for _, args := range [][]string{{"token", "-h"}, {"token", "--help"}, {"token", "help"}} {
		m, stdout, _ := newMain(nil, fx.now)
		err := m.Run(ctx, args)
		if exitCode(err) != 0 || !strings.Contains(stdout.String(), "kpd token revoke ID") {
			t.Errorf("kpd %v: err = %v, output %q; want the token usage and exit status 0", args, err, stdout)
		}
	}
	m, _, stderr := newMain(nil, fx.now)
	if err := m.Run(ctx, []string{"token", "revoke", "-h"}); exitCode(err) != 0 || !strings.Contains(stderr.String(), "usage: kpd token revoke ID ") {
		t.Errorf("token revoke -h: err = %v, output %q; want a usage line with ID", err, stderr)
	}
	// Package flag takes a `quoted` word of a flag's usage for its value.
	m, _, stderr = newMain(nil, fx.now)
	if err := m.Run(ctx, []string{"token", "create", "-h"}); exitCode(err) != 0 || strings.Contains(stderr.String(), "-label kpd") {
		t.Errorf("token create -h: err = %v, output %q", err, stderr)
	}
}

func TestParseFlagsInterleaved(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		positional []string
		db         string
	}{
		{[]string{"ID", "--db", "x.db"}, []string{"ID"}, "x.db"},
		{[]string{"--db", "x.db", "ID"}, []string{"ID"}, "x.db"},
		{[]string{"a", "--db=x.db", "b"}, []string{"a", "b"}, "x.db"},
		{[]string{"a", "--", "--db", "x.db"}, []string{"a", "--db", "x.db"}, "kpd.db"},
		{[]string{"-", "--db", "x.db"}, []string{"-"}, "x.db"},
	} {
		fs := newFlagSet("t", io.Discard, "t")
		db := fs.String("db", "kpd.db", "")
		positional, err := parseFlags(fs, tc.args, func(string) string { return "" })
		if err != nil || !slices.Equal(positional, tc.positional) || *db != tc.db {
			t.Errorf("parseFlags(%q) = %q, --db %q, %v; want %q, --db %q", tc.args, positional, *db, err, tc.positional, tc.db)
		}
	}
}

// Against a server without admin routes, the commands that need them say
// so and how to turn them on; a database that a server holds is refused
// with a pointer to --url; a --url without a scheme is a usage error.
func TestAdminCommandErrors(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "kpd.db")
	srv, _, _ := newMain(nil, fx.now)
	url := startServe(t, srv, "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "token")
	env := map[string]string{"KPD_ADMIN_TOKEN": backupTestToken}
	for _, args := range [][]string{
		{"backup", "--url", url, "-o", filepath.Join(dir, "snap.db")},
		{"token", "list", "--url", url},
		{"token", "create", "--url", url, "--did", aliceDID},
		{"token", "revoke", "0123456789abcdef", "--url", url},
	} {
		_, err := runCmd(env, fx.now, args...)
		if exitCode(err) != 1 || !errors.Is(err, errAdminOff) || !strings.Contains(err.Error(), "--admin-token-file") ||
			strings.Contains(err.Error(), "no route") {
			t.Errorf("kpd %v against a server without admin routes: err = %v, want how to turn them on", args, err)
		}
	}
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Errorf("directory holds %v, want only the database", names)
	}

	_, err := runCmd(nil, fx.now, "token", "create", "--db", dbPath, "--did", aliceDID)
	if !errors.Is(err, kv.ErrInUse) || !strings.Contains(err.Error(), "--url") {
		t.Errorf("token create on a served database: err = %v, want kv.ErrInUse and a hint at --url", err)
	}

	for _, args := range [][]string{
		{"backup", "--url", strings.TrimPrefix(url, "http://"), "-o", filepath.Join(dir, "snap.db")},
		{"token", "list", "--url", strings.TrimPrefix(url, "http://")},
		{"token", "list", "--url", "ftp://127.0.0.1/"},
	} {
		_, err := runCmd(env, fx.now, args...)
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "http://") {
			t.Errorf("kpd %v: err = %v, want a usage error showing an http:// URL", args, err)
		}
	}
}
