package bench

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// cpuModel returns the first "model name" of /proc/cpuinfo, or "" where
// there is none.
func cpuModel() string {
	v, _ := procField("/proc/cpuinfo", "model name")
	return v
}

// memTotal returns MemTotal of /proc/meminfo in bytes, or 0 where there is
// none.
func memTotal() uint64 {
	v, ok := procField("/proc/meminfo", "MemTotal")
	if !ok {
		return 0
	}
	kb, err := strconv.ParseUint(strings.TrimSuffix(v, " kB"), 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}

// procField returns the value of the first "key: value" line of a /proc
// file whose key is key.
func procField(path, key string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}
