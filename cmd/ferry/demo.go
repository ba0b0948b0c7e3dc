package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferry-ml/ferry/engine"
)

// runDemo prints the system table, then watches the memory snapshot of the first GPU (or of the host
// when there is none) as the background sampler refreshes it.
func runDemo(cmd *cobra.Command, samples int, interval time.Duration) error {
	w := cmd.OutOrStdout()
	r, err := gatherInfo()
	if err != nil {
		return err
	}
	if err := writeInfoTable(w, r); err != nil {
		return err
	}
	device := engine.CPU
	if len(r.Devices) > 0 {
		device = 0
	}
	e, err := engine.Open(device, engine.WithSampleInterval(interval))
	if err != nil {
		return err
	}
	defer e.Close()
	where := "the host (no GPU: CPU path)"
	if device != engine.CPU {
		where = fmt.Sprintf("GPU %d", device)
	}
	fmt.Fprintf(w, "\nmemory check on %s, sampled every %v:\n", where, interval)
	for i := 0; i < samples; i++ {
		time.Sleep(interval)
		start := time.Now()
		s := e.MemoryCheck()
		cost := time.Since(start)
		if s.DeviceValid {
			fmt.Fprintf(w, "  #%-3d age %-10v device free %s of %s", s.Sequence, s.Age.Round(time.Microsecond),
				gib(s.DeviceFree), gib(s.DeviceTotal))
			if s.ProcessValid {
				fmt.Fprintf(w, ", this process %s", gib(s.ProcessDevice))
			}
		} else {
			fmt.Fprintf(w, "  #%-3d age %-10v host available %s of %s", s.Sequence, s.Age.Round(time.Microsecond),
				gib(s.HostAvailable), gib(s.HostTotal))
		}
		fmt.Fprintf(w, "  (read in %v)\n", cost)
	}
	live, err := e.MemoryCheckLive()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "live check: sequence %d, engine reserved %s, pinned %s\n", live.Sequence,
		gib(live.EngineReserved), gib(live.HostPinned))
	return nil
}

func newDemoCommand() *cobra.Command {
	var samples int
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the built-in demonstration (on the GPU when there is one, else on the CPU)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if samples < 1 {
				return fmt.Errorf("--samples must be at least 1, got %d", samples)
			}
			return runDemo(cmd, samples, interval)
		},
	}
	cmd.Flags().IntVar(&samples, "samples", 5, "snapshots to show")
	cmd.Flags().DurationVar(&interval, "interval", engine.DefaultSampleInterval, "sample interval")
	return cmd
}
