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
	if unlogged := notLogged(err); code != 0 && unlogged != nil {
		fmt.Fprintln(os.Stderr, "kpd:", unlogged)
	}
	os.Exit(code)
}

// notLogged returns err without the errors kpd serve has logged already
// (loggedError), looking into errors.Join: nil if none is left.
func notLogged(err error) error {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var rest []error
		for _, e := range joined.Unwrap() {
			if e = notLogged(e); e != nil {
				rest = append(rest, e)
			}
		}
		return errors.Join(rest...)
	}
	if errors.As(err, new(loggedError)) {
		return nil
	}
	return err
}

// signalContexts returns a context that is done at the first SIGINT or
// SIGTERM, which starts the shutdown, and one that is done at the second,
// which cuts the shutdown's wait for requests in flight short. A third
// signal ends the process at once, as if kpd did not handle signals.
func signalContexts() (first, second context.Context) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	first, cancelFirst := context.WithCancel(context.Background())
	second, cancelSecond := context.WithCancel(context.Background())
	go func() {
		<-sigs
		cancelFirst()
		<-sigs
		signal.Reset(os.Interrupt, syscall.SIGTERM)
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
