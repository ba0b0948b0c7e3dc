package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ferry-ml/ferry/engine"
	"github.com/ferry-ml/ferry/engine/data"
)

// demoConfig is the built-in demonstration: a synthetic labelled image set, generated in memory.
type demoConfig struct {
	imagesArg string // --images: a count of synthetic images, or an image folder
	folder    string // the folder, when --images names one
	images    int
	batch     int
	epochs    int
	workers   int
	prefetch  int
	step      time.Duration // simulated training step per batch
	cpu       bool
	quiet     bool   // no progress bar
	raw       bool   // no layout transform: the u8 images as they are
	staging   string // auto, gather, dma or mapped
}

// demoSampleBytes is one synthetic sample in memory: a 224×224×3 u8 image and an int64 label.
const demoSampleBytes = 224*224*3 + 8

// checkSize refuses, before anything is allocated, an image set larger than the memory available (a Go
// allocation that fails ends the process with a fatal error, not an error to report) and a run whose
// batch count overflows.
func (c demoConfig) checkSize() error {
	if c.images > math.MaxInt/demoSampleBytes {
		return fmt.Errorf("--images %d is too many: %d bytes each would overflow", c.images, demoSampleBytes)
	}
	need := uint64(c.images) * demoSampleBytes
	if _, avail, err := engine.HostMemory(); err == nil && need > avail {
		return fmt.Errorf("--images %d needs %s of memory for the synthetic set; this host has %s available",
			c.images, gib(need), gib(avail))
	}
	if batches := (c.images + c.batch - 1) / c.batch; c.epochs > math.MaxInt/batches {
		return fmt.Errorf("--epochs %d of %d batches each is too many", c.epochs, batches)
	}
	return nil
}

// syntheticImages builds n random 224×224×3 uint8 images with labels in [0, 1000), in memory.
func syntheticImages(n int, seed uint64) (*data.MemorySource, error) {
	fields := []data.Field{
		{Name: "image", DType: data.Uint8, Shape: []int{224, 224, 3}},
		{Name: "label", DType: data.Int64},
	}
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	images := make([]byte, n*fields[0].Bytes())
	_, _ = rng.Read(images)
	labels := make([]byte, n*8)
	r := rand.New(rng)
	for i := 0; i < n; i++ {
		v := uint64(r.IntN(1000))
		for b := 0; b < 8; b++ {
			labels[i*8+b] = byte(v >> (8 * b))
		}
	}
	return data.NewMemorySource(n, fields, [][]byte{images, labels})
}

func runDemo(cmd *cobra.Command, cfg demoConfig) error {
	w := cmd.OutOrStdout()
	r, err := gatherInfo()
	if err != nil {
		return err
	}
	if err := writeInfoTable(w, r); err != nil {
		return err
	}
	device := engine.CPU
	where := "the CPU (no GPU: batches stay in host memory)"
	if len(r.Devices) > 0 && !cfg.cpu {
		device = 0
		where = fmt.Sprintf("GPU 0 (%s)", r.Devices[0].Name)
	}
	var src data.Source
	if cfg.folder != "" {
		folder, err := data.NewImageFolderSource(cfg.folder, data.ImageFolderConfig{})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "\nreading %d images of %d classes from %s\n", folder.Len(), len(folder.Classes()), cfg.folder)
		src = folder
	} else {
		fmt.Fprintf(w, "\ngenerating %d synthetic 224x224x3 images in memory...\n", cfg.images)
		mem, err := syntheticImages(cfg.images, 1)
		if err != nil {
			return err
		}
		src = mem
	}
	defer func() { _ = src.Close() }()
	if cfg.batch > src.Len() {
		return fmt.Errorf("--batch must be 1..%d (the number of images), got %d", src.Len(), cfg.batch)
	}

	e, err := engine.Open(device)
	if err != nil {
		return err
	}
	defer func() { _ = e.Close() }()
	staging, err := data.ParseStaging(cfg.staging)
	if err != nil {
		return err
	}
	var transforms map[string]data.Transform
	layout := "u8 [224, 224, 3] as is"
	switch {
	case cfg.folder != "":
		// torchvision's training transform: decode, RandomResizedCrop(224), flip, ImageNet normalization.
		transforms = map[string]data.Transform{"image": data.RandomResizedCrop{Size: 224, Flip: 0.5, Antialias: true,
			Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: data.Float16}}
		layout = "encoded image -> decoded, RandomResizedCrop(224), flip 0.5, normalized float16 [3, 224, 224]"
	case !cfg.raw:
		// ImageNet normalization to float16 CHW with random flips, as a torchvision training pipeline does.
		transforms = map[string]data.Transform{"image": data.Normalize{
			Mean: []float32{0.485, 0.456, 0.406}, Std: []float32{0.229, 0.224, 0.225}, DType: data.Float16, Flip: 0.5}}
		layout = "u8 [224, 224, 3] -> float16 [3, 224, 224], normalized, flip 0.5"
	}
	setup := time.Now()
	it, err := data.NewIterator(e, src, data.IteratorOptions{
		BatchSize: cfg.batch, Shuffle: true, Seed: 1, Workers: cfg.workers, Prefetch: cfg.prefetch,
		Transforms: transforms, Staging: staging,
	})
	if err != nil {
		return err
	}
	defer func() { _ = it.Close() }()
	opts := it.Options()
	used, why := it.Staging()
	fmt.Fprintf(w, "prefetching to %s: batch %d, %d workers, %d batches in flight (ring allocated in %v)\n",
		where, opts.BatchSize, opts.Workers, opts.Prefetch, time.Since(setup).Round(10*time.Microsecond))
	fmt.Fprintf(w, "layout      %s\nstaging     %s (%s)\n", layout, used, why)

	total := cfg.epochs * it.BatchesPerEpoch()
	var bar *progressbar.ProgressBar
	if f, ok := w.(*os.File); !cfg.quiet && ok && term.IsTerminal(int(f.Fd())) { // a bar only on a terminal
		bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("batches"),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("batch"),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
	}
	start := time.Now()
	for done := 0; done < total; {
		b, err := it.Next(context.Background(), 0)
		if errors.Is(err, io.EOF) {
			continue
		}
		if err != nil {
			return err
		}
		if cfg.step > 0 {
			time.Sleep(cfg.step) // the training step the batch would feed
		}
		if err := b.Release(0); err != nil {
			return err
		}
		done++
		if bar != nil {
			_ = bar.Add(1)
		}
	}
	elapsed := time.Since(start)
	if bar != nil {
		_ = bar.Finish()
	}
	st := it.Stats()
	snap, err := e.MemoryCheckLive()
	if err != nil {
		return err
	}
	secs := elapsed.Seconds()
	fmt.Fprintf(w, "\n%d batches, %d images in %.2f s\n", st.Batches, st.Samples, secs)
	fmt.Fprintf(w, "throughput  %.0f images/s, %.2f GB/s of source data\n", float64(st.Samples)/secs, float64(st.Bytes)/secs/1e9)
	fmt.Fprintf(w, "data stall  %.2f s (%.1f%% of the loop: time next() waited for data)\n",
		st.Stall.Seconds(), 100*st.Stall.Seconds()/secs)
	fmt.Fprintf(w, "memory      engine reserved %s, pinned %s", gib(snap.EngineReserved), gib(snap.HostPinned))
	if snap.DeviceValid {
		fmt.Fprintf(w, ", device free %s of %s", gib(snap.DeviceFree), gib(snap.DeviceTotal))
	}
	if snap.HostValid {
		fmt.Fprintf(w, ", host available %s of %s", gib(snap.HostAvailable), gib(snap.HostTotal))
	}
	fmt.Fprintln(w)
	return nil
}

func newDemoCommand() *cobra.Command {
	var cfg demoConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Prefetch a built-in synthetic image set (on the GPU when there is one, else on the CPU)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n, err := strconv.Atoi(cfg.imagesArg); err == nil {
				cfg.images = n
			} else if st, serr := os.Stat(cfg.imagesArg); serr == nil && st.IsDir() {
				cfg.folder = cfg.imagesArg
			} else {
				return fmt.Errorf("--images must be a count of synthetic images or an image folder (one folder per class), not %q", cfg.imagesArg)
			}
			switch {
			case cfg.folder == "" && cfg.images < 1:
				return fmt.Errorf("--images must be at least 1, got %d", cfg.images)
			case cfg.batch < 1 || (cfg.folder == "" && cfg.batch > cfg.images):
				return fmt.Errorf("--batch must be 1..%d (the number of images), got %d", max(cfg.images, 1), cfg.batch)
			case cfg.epochs < 1:
				return fmt.Errorf("--epochs must be at least 1, got %d", cfg.epochs)
			case cfg.step < 0:
				return fmt.Errorf("--step must not be negative, got %v", cfg.step)
			}
			if cfg.folder != "" {
				return runDemo(cmd, cfg)
			}
			if err := cfg.checkSize(); err != nil {
				return err
			}
			return runDemo(cmd, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.imagesArg, "images", "2048", "synthetic 224x224x3 images to generate, or an image folder (a folder per class of JPEG, PNG, WebP, ... files) to read")
	f.IntVar(&cfg.batch, "batch", 256, "batch size")
	f.IntVar(&cfg.epochs, "epochs", 2, "epochs to run")
	f.IntVar(&cfg.workers, "workers", 0, "gather workers (0: one per core, up to 16)")
	f.IntVar(&cfg.prefetch, "prefetch", 0, "batches in flight (0: 4)")
	f.DurationVar(&cfg.step, "step", 0, "simulated training step per batch, e.g. 20ms")
	f.BoolVar(&cfg.cpu, "cpu", false, "stay on the CPU even when there is a GPU")
	f.BoolVar(&cfg.quiet, "quiet", false, "no progress bar (there is none when the output is not a terminal)")
	f.BoolVar(&cfg.raw, "raw", false, "deliver the u8 images as they are (no normalize/flip layout step)")
	f.StringVar(&cfg.staging, "staging", "auto", "how samples cross to the GPU: auto, gather, dma or mapped")
	return cmd
}
