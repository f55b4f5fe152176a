package main

import (
	"runtime/debug"
	"strconv"
)

// serveGCPercent is the garbage collector's GOGC for kpd serve and the
// in-process server of kpd bench, unless the GOGC environment variable sets
// one. kpd's live heap is a few MB (stored data lives in bbolt's memory map,
// not on the heap), so Go's default of 100 starts a collection after every
// few MB allocated: under a publish load of 12,000 KeyPackages/s that is
// dozens of collections a second, whose assists and CPU share made the p99
// latency three times as long. At 400 the heap stays around 20-25 MB
// (docs/BENCHMARKS.md, "Garbage collection").
const serveGCPercent = 400

// setServeGC sets serveGCPercent unless getenv("GOGC") is set, and returns
// the GOGC in effect (as GOGC spells it: a number, or "off").
func setServeGC(getenv func(string) string) string {
	if v := getenv("GOGC"); v != "" {
		return v
	}
	debug.SetGCPercent(serveGCPercent)
	return strconv.Itoa(serveGCPercent)
}
