package main

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// holdRequest starts a request to the server at addr whose body never
// arrives in full, so that it stays in flight until the server closes its
// connection.
func holdRequest(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "POST /v1/welcomes HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", addr, aliceDID)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the handler start reading the body
}

// A drain that outlasts --shutdown-timeout ends in a log line that says so
// and names the flag.
func TestShutdownTimeoutIsLogged(t *testing.T) {
	fx := loadFixture(t)
	m, _, stderr := newMain(nil, fx.now)
	startServe(t, m, "--db", filepath.Join(t.TempDir(), "kpd.db"), "--listen", "127.0.0.1:0", "--auth", "dev",
		"--shutdown-timeout", "300ms")
	holdRequest(t, m.Addr())

	start := time.Now()
	err := m.Close()
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Close took %v with --shutdown-timeout 300ms", elapsed)
	}
	if !errors.As(err, new(loggedError)) || exitCode(err) != 1 {
		t.Errorf("Close after the timeout: err = %v, want a logged error (exit status 1)", err)
	}
	line := regexp.MustCompile(`\{"level":"error","shutdown_timeout":"300ms",.*--shutdown-timeout.*\}`)
	if !line.MatchString(stderr.String()) {
		t.Errorf("no JSON log line about the shutdown timeout:\n%s", stderr)
	}
}

// A second SIGTERM during the drain stops kpd at once, with a non-zero
// exit status and a log line, instead of waiting for --shutdown-timeout.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	p := startServeProcess(t, "--db", filepath.Join(t.TempDir(), "sig.db"), "--listen", "127.0.0.1:0",
		"--auth", "dev", "--shutdown-timeout", "1m")
	holdRequest(t, p.addr(t))

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitLine(t, regexp.MustCompile(`"message":"shutting down`))
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitLine(t, regexp.MustCompile(`\{"level":"error",.*"message":"shutdown cut short by a second signal`))
	var ee *exec.ExitError
	if err := p.wait(t); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("exit after a second SIGTERM: %v, want exit status 1", err)
	}
	if regexp.MustCompile(`(?m)^kpd: `).MatchString(p.logs.String()) {
		t.Errorf("an error outside the JSON log:\n%s", p.logs)
	}
}
