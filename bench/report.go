package bench

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteText writes the report as a human-readable table.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "kpd bench: scenario %s, %d workers, suite %d, against %s\n", r.Scenario, r.Workers, r.Suite, r.Target)
	if r.Rate > 0 {
		fmt.Fprintf(w, "paced to %.0f operations per second\n", r.Rate)
	}
	fmt.Fprintf(w, "machine: %d CPUs (%s), %.1f GiB, %s %s/%s; %s\n",
		r.Machine.CPUs, r.Machine.CPUModel, float64(r.Machine.MemoryBytes)/(1<<30),
		r.Machine.GoVersion, r.Machine.OS, r.Machine.Arch, r.Date.Format("2006-01-02 15:04 MST"))
	if r.Preloaded > 0 {
		fmt.Fprintf(w, "preloaded %d synthetic KeyPackages in %.1fs\n", r.Preloaded, r.PreloadSeconds)
	}
	if r.Generated > 0 {
		fmt.Fprintf(w, "made %d KeyPackages for %d devices in %.1fs before the timed phase\n", r.Generated, r.Devices, r.GenerateSeconds)
	}
	if r.SetupPublished > 0 {
		fmt.Fprintf(w, "filled pools with %d KeyPackages in %.1fs\n", r.SetupPublished, r.SetupSeconds)
	}
	fmt.Fprintf(w, "timed phase: %.2fs, ended by %s\n\n", r.Seconds, r.Stopped)
	fmt.Fprintln(tw, "op\tcount\terrors\tper s\titems/s\tmean ms\tp50 ms\tp95 ms\tp99 ms\tmax ms\t")
	for _, o := range r.Operations {
		items := "-"
		if o.Items > 0 {
			items = fmt.Sprintf("%.0f", o.ItemsPerSecond)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
			o.Op, o.Count, o.Errors, o.PerSecond, items, o.MeanMs, o.P50Ms, o.P95Ms, o.P99Ms, o.MaxMs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if s := r.Store; s != nil && s.Commits > 0 {
		fmt.Fprintf(w, "\nstore: %d commits, %.1f operations and %.1f pages written per commit; commit p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
			s.Commits, float64(s.Operations)/float64(s.Commits), float64(s.PagesWritten)/float64(s.Commits),
			s.CommitP50Ms, s.CommitP99Ms, s.CommitMaxMs)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "error: %s %s x%d, e.g. %s\n", e.Op, e.Code, e.Count, e.Sample)
	}
	return nil
}
