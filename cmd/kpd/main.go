// Command kpd runs the kpd KeyPackage and Welcome directory and its
// maintenance commands. main only maps errors to exit codes; the work is
// done by Main, which tests start in-process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	m := NewMain()
	err := m.Run(ctx, os.Args[1:])
	if err == nil {
		err = m.Wait(ctx)
	}
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	code := exitCode(err)
	if code != 0 {
		fmt.Fprintln(os.Stderr, "kpd:", err)
	}
	os.Exit(code)
}

// exitCode maps Run's error to the process exit status: 0 success, 1 a
// failed check or runtime error, 2 a usage error.
func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		return 1
	}
}
