package mls

// This file gives the tests of package mls and of package mls_test what
// they need, beyond testkit.Fixtures, to use the ts-mls fixtures of
// testdata/mls (see the README.md beside them).

import (
	"testing"
	"time"

	"github.com/kpd-dir/kpd/internal/testkit"
)

// AliceDID is the DID of the alice_* fixtures.
const AliceDID = testkit.AliceDID

// FixtureRegistry returns a Registry with the built-in suites plus every
// fixture suite, added through Registry.Add.
func FixtureRegistry(tb testing.TB, f *testkit.FixtureSet) *Registry {
	tb.Helper()
	r := NewRegistry()
	for _, s := range f.Suites {
		if err := r.Add(s.Spec()); err != nil {
			tb.Fatalf("Add(%q): %v", s.Spec(), err)
		}
	}
	return r
}

// FixturePolicy returns kpd's default policy at the given clock.
func FixturePolicy(now time.Time) Policy {
	return Policy{Now: now, MaxLifetime: DefaultMaxLifetime, ClockSkew: DefaultClockSkew}
}
