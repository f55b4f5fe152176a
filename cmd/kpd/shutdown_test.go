package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
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

// buildKPD builds the kpd binary into a temporary directory.
func buildKPD(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kpd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// A second SIGTERM during the drain stops kpd at once, with a non-zero
// exit status and a log line, instead of waiting for --shutdown-timeout.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	bin := buildKPD(t)
	cmd := exec.Command(bin, "serve", "--db", filepath.Join(t.TempDir(), "sig.db"), "--listen", "127.0.0.1:0",
		"--auth", "dev", "--shutdown-timeout", "1m")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := &testkit.SyncBuffer{}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(stderr); sc.Scan(); {
			fmt.Fprintln(logs, sc.Text())
			lines <- sc.Text()
		}
	}()
	waitLine := func(re *regexp.Regexp) []string {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("kpd exited before logging %s:\n%s", re, logs)
				}
				if m := re.FindStringSubmatch(line); m != nil {
					return m
				}
			case <-timeout:
				t.Fatalf("no log line %s:\n%s", re, logs)
			}
		}
	}
	addr := waitLine(regexp.MustCompile(`kpd listening on http://(127\.0\.0\.1:\d+)`))[1]
	holdRequest(t, addr)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLine(regexp.MustCompile(`"message":"shutting down`))
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLine(regexp.MustCompile(`\{"level":"error",.*"message":"shutdown cut short by a second signal`))
	// The log ends when kpd exits; only then may Wait close the pipe.
	timeout := time.After(10 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-lines:
		case <-timeout:
			t.Fatalf("kpd did not exit after a second SIGTERM:\n%s", logs)
		}
	}
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("exit after a second SIGTERM: %v, want exit status 1", err)
	}
	if regexp.MustCompile(`(?m)^kpd: `).MatchString(logs.String()) {
		t.Errorf("an error outside the JSON log:\n%s", logs)
	}
}
