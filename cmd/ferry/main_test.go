package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestVersionMatchesHeader(t *testing.T) {
	h, err := os.ReadFile("../../capi/ferry.h")
	require.NoError(t, err)
	var parts []string
	for _, name := range []string{"MAJOR", "MINOR", "PATCH"} {
		m := regexp.MustCompile(`#define FERRY_VERSION_` + name + ` (\d+)`).FindSubmatch(h)
		require.NotNil(t, m, "FERRY_VERSION_%s in ferry.h", name)
		parts = append(parts, string(m[1]))
	}
	require.Equal(t, parts[0]+"."+parts[1]+"."+parts[2], version)
	v, err := os.ReadFile("../../VERSION")
	require.NoError(t, err)
	require.Equal(t, strings.TrimSpace(string(v)), version, "the CLI's version is the VERSION file's")
}

func TestInfoJSON(t *testing.T) {
	out, err := runCLI(t, "info", "--json")
	require.NoError(t, err)
	var r infoReport
	require.NoError(t, json.Unmarshal([]byte(out), &r), out)
	require.Equal(t, version, r.Version)
	require.Equal(t, r.System.DeviceCount, len(r.Devices))
	require.NotEmpty(t, r.Memory)
	if len(r.Devices) == 0 {
		require.False(t, r.System.CUDAAvailable && r.System.DeviceCount > 0)
		m := r.Memory[0]
		require.Equal(t, -1, m.Device)
		require.NotNil(t, m.HostTotalBytes)
		require.Positive(t, *m.HostTotalBytes)
		require.Nil(t, m.DeviceTotalBytes, "no device figures on the CPU")
	} else {
		for i, m := range r.Memory {
			require.Equal(t, i, m.Device)
			require.NotNil(t, m.DeviceTotalBytes)
			require.Equal(t, r.Devices[i].TotalMemoryBytes, *m.DeviceTotalBytes)
		}
	}
	require.True(t, r.Memory[0].Live)
}

func TestInfoTableAndDemo(t *testing.T) {
	out, err := runCLI(t, "info")
	require.NoError(t, err)
	require.Contains(t, out, "ferry "+version)
	require.Contains(t, out, "CUDA driver")
	require.Contains(t, out, "HOST AVAILABLE")

	out, err = runCLI(t, "demo", "--images", "300", "--batch", "64", "--epochs", "2", "--quiet")
	require.NoError(t, err)
	require.Regexp(t, `prefetching to (GPU 0|the CPU)`, out)
	require.Contains(t, out, "10 batches, 600 images", "2 epochs of 5 batches (the last one short)")
	require.Regexp(t, `throughput +\d+ images/s`, out)
	require.Contains(t, out, "data stall")

	// An image folder: JPEGs decoded and cropped.
	dir := t.TempDir()
	for k, name := range []string{"astronaut_q90_420", "coffee_progressive", "chelsea_gray"} {
		b, rerr := os.ReadFile(filepath.Join("..", "..", "engine", "data", "testdata", "images", name+".jpg"))
		require.NoError(t, rerr)
		cls := filepath.Join(dir, []string{"a", "b"}[k%2])
		require.NoError(t, os.MkdirAll(cls, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(cls, name+".jpg"), b, 0o644))
	}
	out, err = runCLI(t, "demo", "--images", dir, "--batch", "2", "--epochs", "2", "--quiet")
	if err != nil && strings.Contains(err.Error(), "TurboJPEG") {
		t.Logf("no TurboJPEG here: %v", err)
	} else {
		require.NoError(t, err)
		require.Contains(t, out, "reading 3 images of 2 classes")
		require.Contains(t, out, "RandomResizedCrop(224)")
		require.Contains(t, out, "4 batches, 6 images")
	}

	for _, args := range [][]string{
		{"demo", "--images", "0"}, {"demo", "--batch", "0"}, {"demo", "--images", "10", "--batch", "11"},
		{"demo", "--images", "no/such/folder"}, {"demo", "--images", dir, "--batch", "4"},
		{"demo", "--epochs", "0"}, {"demo", "--step", "-1s"},
	} {
		_, err = runCLI(t, args...)
		require.Error(t, err, "%v", args)
	}
	// Sizes beyond the host's memory, or whose bytes or batch count overflow, are refused in one line
	// before anything is allocated (a failed Go allocation is a fatal error, not an error).
	_, avail, err := engine.HostMemory()
	require.NoError(t, err)
	tooMany := strconv.FormatUint(avail/(224*224*3)+1, 10)
	for _, args := range [][]string{
		{"demo", "--images", tooMany}, {"demo", "--images", "100000000"},
		{"demo", "--images", strconv.Itoa(math.MaxInt)},
		{"demo", "--images", "2", "--batch", "1", "--epochs", strconv.Itoa(math.MaxInt)},
	} {
		_, err = runCLI(t, args...)
		require.Error(t, err, "%v", args)
		require.NotContains(t, err.Error(), "\n", "%v", args)
		require.Regexp(t, `--(images|epochs) \d+ .*(needs|is too many)`, err.Error(), "%v", args)
	}
	_, err = runCLI(t, "info", "extra")
	require.Error(t, err)
}
