package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpd-dir/kpd"
	"github.com/kpd-dir/kpd/client"
	"github.com/kpd-dir/kpd/internal/testkit"
	"github.com/kpd-dir/kpd/kv"
	"github.com/kpd-dir/kpd/mls"
	"github.com/kpd-dir/kpd/mls/mlstest"
)

const aliceDID = testkit.AliceDID

// fixture is alice_dev1 of suite 1 from testdata/mls, with the time at which
// it is valid.
type fixture struct {
	keyPackage []byte
	ref        kpd.Ref
	now        time.Time
}

func loadFixture(t *testing.T) fixture {
	t.Helper()
	kp := testkit.Fixtures(t).Suite(t, 1).KeyPackages["alice_dev1"]
	return fixture{keyPackage: kp.Message, ref: kp.Ref(), now: kp.Now()}
}

// postWelcome posts, as c, a suite 1 Welcome for the fixture's KeyPackage.
func (fx fixture) postWelcome(t *testing.T, ctx context.Context, c *client.Client) {
	t.Helper()
	suite, _ := mls.NewRegistry().Lookup(1)
	ref, _ := fx.ref.Bytes()
	welcome, err := mlstest.Welcome(suite, ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PostWelcome(ctx, "convo", welcome); err != nil {
		t.Fatal(err)
	}
}

// newMain returns a Main with captured output, an environment of its own and
// the fixture's clock.
func newMain(env map[string]string, now time.Time) (*Main, *testkit.SyncBuffer, *testkit.SyncBuffer) {
	stdout, stderr := &testkit.SyncBuffer{}, &testkit.SyncBuffer{}
	m := &Main{
		Stdout: stdout,
		Stderr: stderr,
		Getenv: func(k string) string { return env[k] },
		Clock:  func() time.Time { return now },
	}
	return m, stdout, stderr
}

// startServe runs `kpd serve` in-process and stops it when the test ends.
func startServe(t *testing.T, m *Main, args ...string) string {
	t.Helper()
	if err := m.Run(context.Background(), append([]string{"serve"}, args...)); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return "http://" + m.Addr()
}

func TestServeReadsEnvironment(t *testing.T) {
	fx := loadFixture(t)
	dbPath := filepath.Join(t.TempDir(), "env.db")
	m, _, stderr := newMain(map[string]string{
		"KPD_DB":     dbPath,
		"KPD_LISTEN": "127.0.0.1:0",
		"KPD_AUTH":   "dev",
	}, fx.now)
	url := startServe(t, m)

	if !strings.Contains(stderr.String(), "kpd listening on "+url) {
		t.Errorf("start-up log does not name the address %s:\n%s", url, stderr)
	}
	if _, err := os.Stat(dbPath); err != nil {
		t.Errorf("KPD_DB not used: %v", err)
	}
	c := client.New(url, aliceDID)
	ctx := context.Background()
	if err := c.Ready(ctx); err != nil {
		t.Fatalf("ready: %v", err)
	}
	res, err := c.Publish(ctx, "dev1", [][]byte{fx.keyPackage})
	if err != nil {
		t.Fatalf("publish with dev auth: %v", err)
	}
	if got := res.Results[0].Ref; got != fx.ref {
		t.Errorf("ref = %s, want %s", got, fx.ref)
	}
	if logs := stderr.String(); !strings.Contains(logs, `"did":"`+aliceDID+`"`) ||
		!strings.Contains(logs, `"route":"/v1/devices/{device}/key-packages"`) {
		t.Errorf("request log lacks the caller or the route:\n%s", logs)
	}
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	fx := loadFixture(t)
	m, _, _ := newMain(map[string]string{"KPD_LISTEN": "127.0.0.1:1", "KPD_AUTH": "dev"}, fx.now)
	startServe(t, m, "--db", filepath.Join(t.TempDir(), "f.db"), "--listen", "127.0.0.1:0")
	if strings.HasSuffix(m.Addr(), ":1") {
		t.Fatalf("environment won over the flag: listening on %s", m.Addr())
	}
}

func TestSecondServerOnSameDatabaseFails(t *testing.T) {
	fx := loadFixture(t)
	dbPath := filepath.Join(t.TempDir(), "busy.db")
	first, _, _ := newMain(nil, fx.now)
	startServe(t, first, "--db", dbPath, "--listen", "127.0.0.1:0")

	second, _, _ := newMain(nil, fx.now)
	err := second.Run(context.Background(), []string{"serve", "--db", dbPath, "--listen", "127.0.0.1:0"})
	defer second.Close()
	if !errors.Is(err, kv.ErrInUse) {
		t.Fatalf("second serve: err = %v, want kv.ErrInUse", err)
	}
	if !strings.Contains(err.Error(), dbPath) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestDevAuthRequiresLoopback(t *testing.T) {
	m, _, _ := newMain(nil, time.Now())
	err := m.Run(context.Background(), []string{"serve", "--auth", "dev", "--listen", "0.0.0.0:0",
		"--db", filepath.Join(t.TempDir(), "x.db")})
	defer m.Close()
	if !errors.Is(err, errUsage) {
		t.Fatalf("err = %v, want a usage error", err)
	}
	if exitCode(err) != 2 {
		t.Errorf("exit code = %d, want 2", exitCode(err))
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"serve", "--no-such-flag"},
		{"serve", "--auth", "magic"},
		{"serve", "--suite", "0x0053=md5:ed25519"},
		{"serve", "--log-level", "loud"},
		{"token"},
		{"token", "create", "--did", "alice"},
		{"token", "revoke"},
	} {
		m, _, _ := newMain(nil, time.Now())
		err := m.Run(context.Background(), args)
		m.Close()
		if exitCode(err) != 2 {
			t.Errorf("kpd %v: err = %v, want exit status 2", args, err)
		}
	}
}

func TestTokenLifecycle(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "tokens.db")
	env := map[string]string{"KPD_DB": dbPath}

	create, stdout, _ := newMain(env, fx.now)
	if err := create.Run(ctx, []string{"token", "create", "--create-db", "--did", aliceDID, "--label", "laptop"}); err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(stdout.String())
	if token == "" {
		t.Fatal("token create printed no token")
	}

	list, listOut, _ := newMain(env, fx.now)
	if err := list.Run(ctx, []string{"token", "list"}); err != nil {
		t.Fatal(err)
	}
	if out := listOut.String(); !strings.Contains(out, aliceDID) || !strings.Contains(out, "laptop") || strings.Contains(out, token) {
		t.Fatalf("token list output wrong (or shows the token):\n%s", out)
	}
	id := strings.Fields(strings.Split(listOut.String(), "\n")[1])[0]

	// The token authenticates Alice against a token-auth server.
	srv, _, _ := newMain(env, fx.now)
	srvLog := &testkit.SyncBuffer{}
	srv.Stderr = srvLog
	url := startServe(t, srv, "--listen", "127.0.0.1:0")
	if _, err := client.New(url, token).Publish(ctx, "dev1", [][]byte{fx.keyPackage}); err != nil {
		t.Fatalf("publish with token: %v", err)
	}
	var cerr *client.Error
	if _, err := client.New(url, token+"x").Devices(ctx); !errors.As(err, &cerr) || cerr.Code != kpd.CodeUnauthorized {
		t.Fatalf("wrong token: err = %v, want Unauthorized", err)
	}
	if strings.Contains(srvLog.String(), token) || !strings.Contains(srvLog.String(), aliceDID) {
		t.Errorf("server log leaks the token or lacks the caller:\n%s", srvLog)
	}
	// While the server holds the file, token commands fail clearly.
	busy, _, _ := newMain(env, fx.now)
	if err := busy.Run(ctx, []string{"token", "list"}); !errors.Is(err, kv.ErrInUse) {
		t.Fatalf("token list on a busy database: err = %v, want kv.ErrInUse", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	revoke, _, _ := newMain(env, fx.now)
	if err := revoke.Run(ctx, []string{"token", "revoke", id}); err != nil {
		t.Fatalf("revoke %s: %v", id, err)
	}
	again, _, _ := newMain(env, fx.now)
	if err := again.Run(ctx, []string{"token", "revoke", id}); exitCode(err) != 1 {
		t.Fatalf("revoking twice: err = %v, want a failure", err)
	}

	srv2, _, _ := newMain(env, fx.now)
	url = startServe(t, srv2, "--listen", "127.0.0.1:0")
	if _, err := client.New(url, token).Devices(ctx); !errors.As(err, &cerr) || cerr.Code != kpd.CodeUnauthorized {
		t.Fatalf("revoked token: err = %v, want Unauthorized", err)
	}
}

func TestVerifyCommand(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "verify.db")

	srv, _, _ := newMain(nil, fx.now)
	url := startServe(t, srv, "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "dev")
	if _, err := client.New(url, aliceDID).Publish(ctx, "dev1", [][]byte{fx.keyPackage}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}

	m, stdout, _ := newMain(nil, fx.now)
	// --timeout takes kpd's durations, a bare number of seconds too.
	if err := m.Run(ctx, []string{"verify", "--db", dbPath, "--timeout", "2"}); err != nil {
		t.Fatalf("verify: %v\n%s", err, stdout)
	}
	if !strings.Contains(stdout.String(), ": ok") {
		t.Errorf("verify output = %q", stdout)
	}

	missing, _, _ := newMain(nil, fx.now)
	if err := missing.Run(ctx, []string{"verify", "--db", filepath.Join(t.TempDir(), "absent.db")}); exitCode(err) != 1 {
		t.Errorf("verify of a missing file: err = %v, want exit status 1", err)
	}
	if got := exitCode(errViolations); got != 1 {
		t.Errorf("exit code for violations = %d, want 1", got)
	}
}

// TestServeMigratesSchema3 runs kpd on a database of schema 3 (kv's test
// data, 12 KeyPackages, so 24 steps): kpd verify refuses it, kpd serve
// migrates it and logs its progress, and kpd verify then finds it sound.
func TestServeMigratesSchema3(t *testing.T) {
	fx := loadFixture(t)
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join("..", "..", "kv", "testdata", "schema3.bolt"))
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "schema3.db")
	if err := os.WriteFile(dbPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	verify := func() (string, error) {
		m, stdout, _ := newMain(nil, fx.now)
		err := m.Run(ctx, []string{"verify", "--db", dbPath})
		return stdout.String(), err
	}
	if out, err := verify(); exitCode(err) != 1 || !strings.Contains(err.Error(), "open it read-write once") || out != "" {
		t.Fatalf("verify of a schema 3 database: %q, %v; want exit status 1 and a hint to open it read-write", out, err)
	}

	srv, _, stderr := newMain(nil, fx.now)
	startServe(t, srv, "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "dev")
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	progress := regexp.MustCompile(`"level":"info","done":24,"total":24,.*"message":"migrating KeyPackages to schema 4"`)
	if logs := stderr.String(); !progress.MatchString(logs) {
		t.Errorf("the migration's progress is not in the log:\n%s", logs)
	}
	if out, err := verify(); err != nil || !strings.HasSuffix(out, ": ok\n") {
		t.Fatalf("verify after the migration: %q, %v", out, err)
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version", "-version"} {
		m, stdout, _ := newMain(nil, time.Now())
		if err := m.Run(context.Background(), []string{arg}); err != nil {
			t.Fatalf("kpd %s: %v", arg, err)
		}
		if !strings.HasPrefix(stdout.String(), "kpd ") {
			t.Errorf("kpd %s output = %q", arg, stdout)
		}
	}
}

// A bad value of a KPD_* variable says what the flag accepts.
func TestEnvironmentValueErrors(t *testing.T) {
	for env, want := range map[string]string{
		"KPD_IDENTITY_CHECK":  `KPD_IDENTITY_CHECK="no": want true or false`,
		"KPD_ALLOW_X509":      `KPD_ALLOW_X509="no": want true or false`,
		"KPD_MAX_DEVICES":     `KPD_MAX_DEVICES="no": want a whole number`,
		"KPD_CLAIM_RETENTION": `KPD_CLAIM_RETENTION: invalid duration "no": want one such as`,
	} {
		m, _, _ := newMain(map[string]string{env: "no"}, time.Now())
		err := m.Run(context.Background(), []string{"serve", "--db", filepath.Join(t.TempDir(), "env.db"), "--listen", "127.0.0.1:0"})
		m.Close()
		if exitCode(err) != 2 || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=no: err = %v, want exit status 2 and %q", env, err, want)
		}
	}
}

// An error of opening a database names its file once.
func TestDatabaseErrorNamesFileOnce(t *testing.T) {
	dir := t.TempDir() // a directory, not a database file
	for _, args := range [][]string{
		{"token", "list", "--db", dir},
		{"serve", "--db", dir, "--listen", "127.0.0.1:0", "--auth", "dev"},
	} {
		m, _, _ := newMain(nil, time.Now())
		err := m.Run(context.Background(), args)
		m.Close()
		if exitCode(err) != 1 || strings.Count(err.Error(), dir) != 1 {
			t.Errorf("kpd %v: err = %v, want one naming %s once", args, err, dir)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90d": 90 * 24 * time.Hour, "0": 0, "30": 30 * time.Second, "1h30m": 90 * time.Minute, "0.5d": 12 * time.Hour,
	} {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "soon", "-1h", "-2d", "d"} {
		if _, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) succeeded", in)
		}
	}
}

// TestSIGTERMShutsDownCleanly runs the real binary: SIGTERM drains, closes the
// database (so another process can open it) and exits 0.
func TestSIGTERMShutsDownCleanly(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "sig.db")
	p := startServeProcess(t, "--db", dbPath, "--listen", "127.0.0.1:0", "--auth", "dev")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.New("http://"+p.addr(t), aliceDID).Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs)
	}
	db, err := kv.Open(dbPath, &kv.Options{OpenTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("database still locked after shutdown: %v", err)
	}
	db.Close()
}

// main prints what kpd serve has not logged: an error joined to a logged
// one (a database that failed to close after a drain cut short) is not
// lost with it.
func TestNotLogged(t *testing.T) {
	logged := loggedError{errors.New("shutdown cut short by a second signal")}
	closeErr := errors.New("close database: boom")
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{logged, ""},
		{fmt.Errorf("serve: %w", logged), ""},
		{closeErr, "close database: boom"},
		{errors.Join(logged, closeErr), "close database: boom"},
		{errors.Join(logged, errors.Join(nil, logged)), ""},
	} {
		got := ""
		if err := notLogged(c.err); err != nil {
			got = err.Error()
		}
		if got != c.want {
			t.Errorf("notLogged(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
