// Command ferry is the command-line face of the engine: device and memory information now; the prefetch
// demo, the live monitor, benchmarks and reports as those capabilities land.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ferry-ml/ferry/engine"
)

// version is the ferry release, engine.Version (set from VERSION by the Makefile's builds); it matches
// FERRY_VERSION_* in ferry.h.
var version = engine.Version

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "GPU data staging, memory checks and metrics for training programs",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newInfoCommand(), newDemoCommand(), newMonitorCommand(), newReportCommand())
	return root
}

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry:", err)
		os.Exit(1)
	}
}
