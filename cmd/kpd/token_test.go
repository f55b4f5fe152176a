package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/internal/testkit"
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
	if !strings.HasPrefix(token, "kpd_") || !strings.Contains(msg, "for "+aliceDID+" created; it is shown only once") {
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
