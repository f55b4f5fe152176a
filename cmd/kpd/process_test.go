package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
)

// TestMain removes the kpd binary that kpdBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string
	binErr    error
)

// kpdBinary builds the kpd binary once for the tests that run it as a
// process of its own (signals reach a process, not a Main).
func kpdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "kpd-bin-"); binErr != nil {
			return
		}
		if out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "kpd"), ".").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "kpd")
}

// serveProcess is `kpd serve` running as a process, with its log.
type serveProcess struct {
	cmd  *exec.Cmd
	logs *testkit.SyncBuffer
	// exited is closed when the process's stderr ends.
	exited chan struct{}
	// seen is how much of logs waitLine has matched past.
	seen int
}

// startServeProcess starts `kpd serve` with args; the test kills it if
// it is still running at the end.
func startServeProcess(t *testing.T, args ...string) *serveProcess {
	t.Helper()
	p := &serveProcess{cmd: exec.Command(kpdBinary(t), append([]string{"serve"}, args...)...),
		logs: &testkit.SyncBuffer{}, exited: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	go func() {
		defer close(p.exited)
		for sc := bufio.NewScanner(stderr); sc.Scan(); {
			fmt.Fprintln(p.logs, sc.Text())
		}
	}()
	return p
}

// waitLine waits up to 10 s for a log line, after those matched before,
// that re matches, and returns its submatches.
func (p *serveProcess) waitLine(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		logs := p.logs.String()
		for lines := logs[p.seen:]; ; {
			line, rest, ok := strings.Cut(lines, "\n")
			if !ok {
				break // a line not written in full yet
			}
			p.seen += len(line) + 1
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
			lines = rest
		}
		select {
		case <-p.exited:
			if len(p.logs.String()) == p.seen {
				t.Fatalf("kpd exited before logging %s:\n%s", re, p.logs)
			}
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %s:\n%s", re, p.logs)
		}
	}
}

// addr waits for the start-up line and returns the address it names.
func (p *serveProcess) addr(t *testing.T) string {
	t.Helper()
	return p.waitLine(t, regexp.MustCompile(`kpd listening on http://(127\.0\.0\.1:\d+)`))[1]
}

// wait waits up to 10 s for the process to exit, and returns cmd.Wait's
// error.
func (p *serveProcess) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.exited: // the log ends when kpd exits; only then may Wait close the pipe
	case <-time.After(10 * time.Second):
		t.Fatalf("kpd did not exit:\n%s", p.logs)
	}
	return p.cmd.Wait()
}
