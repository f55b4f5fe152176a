package main

import (
	"runtime/debug"
	"strconv"
)

// serveGCPercent is the garbage collector's GOGC for kpd serve and the
// in-process server of kpd bench, unless the GOGC environment variable sets
// one. kpd's live heap is a few MB (stored data lives in bbolt's memory map,
// not on the heap), so Go's default of 100 starts a collection after every
// few MB allocated: under a publish load of 14,000 KeyPackages/s that is
// dozens of collections a second, and their assists and CPU share made the
// publish p99 several times as long. 200 took most of that away; 400 did
// no better at p99 and doubled the heap, which at 1M stored KeyPackages
// took the RSS past 150 MB (docs/BENCHMARKS.md, "Garbage collection").
const serveGCPercent = 200

// setServeGC sets serveGCPercent unless getenv("GOGC") is set, and returns
// the GOGC in effect (as GOGC spells it: a number, or "off").
func setServeGC(getenv func(string) string) string {
	if v := getenv("GOGC"); v != "" {
		return v
	}
	debug.SetGCPercent(serveGCPercent)
	return strconv.Itoa(serveGCPercent)
}
