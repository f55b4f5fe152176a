package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// errUsage marks errors in the command line; they exit with status 2.
var errUsage = errors.New("usage")

func usageErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage to w.
func newFlagSet(name string, w io.Writer, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprintf(w, "usage: kpd %s\n\nflags (each also read from KPD_<FLAG>, e.g. --db from KPD_DB):\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, whose flags may come before, between or after
// the positional arguments ("--" ends the flags), then fills every flag not
// given on the command line from the environment variable KPD_<NAME>
// (upper case, '-' as '_'). Command-line flags win over the environment.
// It returns the positional arguments.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// Parse stops at the first positional argument, or after "--".
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			positional = append(positional, rest...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := envName(f.Name)
		if v := getenv(env); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = envError(env, v, f, serr)
			}
		}
	})
	return positional, err
}

// parseArgs is parseFlags for a command that takes no positional
// arguments.
func parseArgs(fs *flag.FlagSet, args []string, getenv func(string) string, cmd string) error {
	positional, err := parseFlags(fs, args, getenv)
	if err == nil && len(positional) > 0 {
		err = usageErrorf("%s: unexpected argument %q: it takes only flags (kpd %s -h lists them)", cmd, positional[0], cmd)
	}
	return err
}

// envError explains why the value v of the environment variable env does
// not suit flag f. The standard library's flag types say only "parse
// error", so for them it says what they accept; kpd's own types say it
// themselves, naming the value (which a string flag, perhaps a secret,
// never gets here).
func envError(env, v string, f *flag.Flag, err error) error {
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case bool:
			return usageErrorf("%s=%q: want true or false (or 1 or 0)", env, v)
		case int, int64, uint, uint64:
			return usageErrorf("%s=%q: want a whole number", env, v)
		case float64:
			return usageErrorf("%s=%q: want a number", env, v)
		}
	}
	return usageErrorf("%s: %v", env, err)
}

// checkURL refuses a --url that is not an http or https URL with a host,
// which the HTTP client would refuse with a puzzling message. The URL is
// not shown: its user info may hold a credential.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErrorf("--url: want the server's base URL with http:// or https:// and a host, e.g. http://127.0.0.1:8080")
	}
	return nil
}

// envName returns the environment variable that backs a flag.
func envName(flagName string) string {
	return "KPD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// durationValue is a time.Duration flag that also accepts a day suffix
// ("90d") and a bare number of seconds.
type durationValue time.Duration

func (d *durationValue) String() string { return formatDuration(time.Duration(*d)) }

func (d *durationValue) Set(s string) error {
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = durationValue(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 {
			return 0, invalidDuration(s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, invalidDuration(s)
	}
	return v, nil
}

func invalidDuration(s string) error {
	return fmt.Errorf("invalid duration %q: want one such as 90s, 15m, 36h or 90d, or a number of seconds", s)
}

// atLeast1 refuses a count flag below 1: a zero would otherwise stand for
// the default.
func atLeast1(name string, n int) error {
	if n < 1 {
		return usageErrorf("--%s %d: want at least 1", name, n)
	}
	return nil
}

// positive refuses a duration flag of 0, which would otherwise stand for
// the default.
func positive(name string, d time.Duration) error {
	if d <= 0 {
		return usageErrorf("--%s %s: want more than 0, such as 1s, 5m or 30d", name, formatDuration(d))
	}
	return nil
}

func formatDuration(d time.Duration) string {
	if d != 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

// durationVar defines a duration flag stored in p with a default value.
func durationVar(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationValue)(p), name, usage)
}

// listValue is a repeatable string flag; one value may also hold several
// items separated by commas (the environment form).
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// sizeValue is a byte-size flag: a number of bytes, optionally with a
// binary unit (B, KiB, MiB, GiB, TiB; any case), e.g. 512MiB.
type sizeValue int

// sizeUnits are the units of sizeValue, largest first.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}}

func (v *sizeValue) String() string { return formatSize(int(*v)) }

func (v *sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}

func parseSize(s string) (int, error) {
	num, shift := strings.TrimSpace(s), uint(0)
	for _, u := range sizeUnits {
		if len(num) > len(u.suffix) && strings.EqualFold(num[len(num)-len(u.suffix):], u.suffix) {
			num, shift = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.shift
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n > math.MaxInt>>shift {
		return 0, fmt.Errorf("invalid size %q: want a number of bytes, optionally with KiB, MiB, GiB or TiB (e.g. 512MiB)", s)
	}
	return int(n << shift), nil
}

// formatSize writes n in the largest unit that divides it.
func formatSize(n int) string {
	for _, u := range sizeUnits {
		if n != 0 && int64(n)%(int64(1)<<u.shift) == 0 {
			return strconv.Itoa(n>>u.shift) + u.suffix
		}
	}
	return "0"
}

// sizeVar defines a size flag stored in p with a default value.
func sizeVar(fs *flag.FlagSet, p *int, name string, value int, usage string) {
	*p = value
	fs.Var((*sizeValue)(p), name, usage)
}
