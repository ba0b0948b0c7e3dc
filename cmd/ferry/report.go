package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ferry-ml/ferry/engine/report"
)

// reportMergeConfig is what `ferry report merge` was asked to do.
type reportMergeConfig struct {
	out  string // merged JSON; "" for none
	html string // merged HTML page; "" for none
}

func newReportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Work with the JSON reports that monitors write",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newReportMergeCommand())
	return cmd
}

func newReportMergeCommand() *cobra.Command {
	var cfg reportMergeConfig
	cmd := &cobra.Command{
		Use:   "merge [--out merged.json] [--html merged.html] REPORT.json...",
		Short: "Merge the reports of a distributed job's ranks and show its stragglers",
		Long: `merge reads the JSON reports (schema ferry.report/1) that the ranks of one job wrote, for
example report_rank0.json report_rank1.json ..., and prints a table: per rank its node, samples per
second and data stall of each pipeline, and the step count (the count of the first training metric);
then the job's throughput (the sum of the ranks' mean rates) and, per pipeline, the ranks ordered by
data stall, the one that waits most for data first. A figure a rank does not report is shown as "-".

--out writes the merged report as JSON (schema ferry.merged-report/1): each rank's summaries, each
training and pipeline metric combined over the ranks (exact count, mean, min, max and pooled std;
quantiles per rank, as they cannot be merged exactly) and the straggler view. --html writes the same
as a self-contained HTML page.`,
		Example: "  ferry report merge --out merged.json --html merged.html report_rank*.json",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cfg.check(args); err != nil {
				return err
			}
			return runReportMerge(cmd.OutOrStdout(), cfg, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.out, "out", "", "write the merged report as JSON to `PATH`")
	f.StringVar(&cfg.html, "html", "", "write the merged report as an HTML page to `PATH`")
	return cmd
}

// check validates the arguments before any report is read: the inputs are given, the outputs'
// directories exist, and no output would overwrite an input or the other output.
func (c *reportMergeConfig) check(inputs []string) error {
	if len(inputs) == 0 {
		return fmt.Errorf("no reports to merge: give the ranks' JSON reports, such as report_rank0.json report_rank1.json")
	}
	same := func(a, b string) bool {
		aa, err1 := filepath.Abs(a)
		bb, err2 := filepath.Abs(b)
		if err1 != nil || err2 != nil {
			return filepath.Clean(a) == filepath.Clean(b)
		}
		if aa == bb {
			return true
		}
		fa, err1 := os.Stat(a)
		fb, err2 := os.Stat(b)
		return err1 == nil && err2 == nil && os.SameFile(fa, fb)
	}
	for _, o := range []struct{ flag, path string }{{"--out", c.out}, {"--html", c.html}} {
		if o.path == "" {
			continue
		}
		dir := filepath.Dir(o.path)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return fmt.Errorf("%s %s: the directory %s does not exist", o.flag, o.path, dir)
		}
		for _, in := range inputs {
			if same(o.path, in) {
				return fmt.Errorf("%s %s is one of the reports to merge; it would be overwritten", o.flag, o.path)
			}
		}
	}
	if c.out != "" && c.html != "" && same(c.out, c.html) {
		return fmt.Errorf("--out and --html name the same file %s", c.out)
	}
	return nil
}

func runReportMerge(stdout io.Writer, cfg reportMergeConfig, inputs []string) error {
	m, err := report.MergeReportFiles(inputs...)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(stdout, m.Text()); err != nil {
		return err
	}
	if cfg.out != "" {
		if err := m.WriteJSON(cfg.out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nmerged report written to %s\n", cfg.out)
	}
	if cfg.html != "" {
		if err := m.WriteHTML(cfg.html); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "HTML page written to %s\n", cfg.html)
	}
	return nil
}
