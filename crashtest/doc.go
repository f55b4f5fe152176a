// Package crashtest holds kpd's crash-safety test (crash_test.go): it builds
// the kpd binary, serves a database under concurrent publish, claim, Welcome
// and ack load (last-resort KeyPackages included), kills the server with
// SIGKILL, and after each kill checks with `kpd verify` and, after a
// restart, through the API that nothing a 2xx response reported was lost
// or handed out twice: published KeyPackages are present, claimed ones are
// never available again, last resorts stay available and count every claim
// that served them, posted Welcomes stay and acked ones stay acked. Every
// round between two kills must see some 2xx answers of each kind of
// operation. Each kill lands, chosen at random, either at a random moment
// or right after a 2xx answer to a randomly chosen kind of operation.
//
// SIGKILL keeps the kernel's page cache, so the test covers process crashes,
// not power loss (losing writes that were not fsynced).
//
// KPD_CRASH_ROUNDS sets the number of kills (default 20). KPD_CRASH_SEED
// sets the seed of the kill timing and of the load's choices (default: from
// the clock); the test logs the seed it used, so that a failure can be
// replayed, as far as the scheduling of goroutines and processes allows.
// On Linux the servers die with the test process (a parent-death signal),
// also when `go test -timeout` ends it.
package crashtest
