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
	ctx, abort := signalContexts()
	m := NewMain()
	err := m.Run(ctx, os.Args[1:])
	if err == nil {
		err = m.Wait(ctx)
	}
	if cerr := m.Shutdown(abort); err == nil {
		err = cerr
	}
	code := exitCode(err)
	if code != 0 && !errors.As(err, new(loggedError)) {
		fmt.Fprintln(os.Stderr, "kpd:", err)
	}
	os.Exit(code)
}

// signalContexts returns a context that is done at the first SIGINT or
// SIGTERM, which starts the shutdown, and one that is done at the second,
// which cuts the shutdown's wait for requests in flight short.
func signalContexts() (first, second context.Context) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	first, cancelFirst := context.WithCancel(context.Background())
	second, cancelSecond := context.WithCancel(context.Background())
	go func() {
		<-sigs
		cancelFirst()
		<-sigs
		cancelSecond()
	}()
	return first, second
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
