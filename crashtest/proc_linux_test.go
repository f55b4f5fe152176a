package crashtest

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes cmd receive SIGKILL when the test process dies, so that
// a test binary killed by `go test -timeout` (or anything else) leaves no
// `kpd serve` behind. Linux sends the signal when the thread that started
// the child exits; Go keeps its threads for the life of the process unless
// a goroutine exits while locked to one, which this package never does.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
