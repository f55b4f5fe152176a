// Package crashtest holds kpd's crash-safety test (crash_test.go): it builds
// the kpd binary, serves a database under concurrent publish, claim, Welcome
// and ack load, kills the server with SIGKILL at random moments, and after
// each kill checks with `kpd verify` and, after a restart, through the API
// that nothing a 2xx response reported was lost or handed out twice.
//
// KPD_CRASH_ROUNDS sets the number of kills (default 20).
package crashtest
