package main

import (
	"runtime/debug"
	"strconv"
	"testing"
)

func TestSetServeGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)

	if got := setServeGC(func(string) string { return "" }); got != strconv.Itoa(serveGCPercent) {
		t.Errorf("GOGC unset: setServeGC = %q, want %d", got, serveGCPercent)
	}
	if prev := debug.SetGCPercent(100); prev != serveGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", prev, serveGCPercent)
	}

	env := map[string]string{"GOGC": "50"}
	if got := setServeGC(func(k string) string { return env[k] }); got != "50" {
		t.Errorf("GOGC=50: setServeGC = %q, want 50", got)
	}
	if prev := debug.SetGCPercent(100); prev != 100 {
		t.Errorf("GOGC=50: setServeGC changed the GC percent to %d; the runtime applies GOGC itself", prev)
	}
}
