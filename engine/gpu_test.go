package engine

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-ml/ferry/engine/internal/testutil"

	"github.com/stretchr/testify/require"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// normalizePCI turns "00000000:1B:00.0" (nvidia-smi) and "0000:1b:00.0" (driver) into one form.
func normalizePCI(t *testing.T, id string) string {
	t.Helper()
	id = strings.ToLower(strings.TrimSpace(id))
	i := strings.Index(id, ":")
	require.Positive(t, i, "PCI id %q", id)
	dom, err := strconv.ParseUint(id[:i], 16, 32)
	require.NoError(t, err, "PCI id %q", id)
	return fmt.Sprintf("%04x%s", dom, id[i:])
}

func TestGPUDevicesMatchNvidiaSmi(t *testing.T) {
	testutil.RequireGPU(t)
	out, err := exec.Command("nvidia-smi", "--query-gpu=index,name,uuid,pci.bus_id,memory.total",
		"--format=csv,noheader,nounits").Output()
	require.NoError(t, err, "nvidia-smi")
	type smiDev struct {
		name, pci string
		totalMiB  float64
	}
	smi := map[string]smiDev{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, ",")
		require.Len(t, f, 5, "nvidia-smi line %q", line)
		total, err := strconv.ParseFloat(strings.TrimSpace(f[4]), 64)
		require.NoError(t, err)
		smi[strings.TrimSpace(f[2])] = smiDev{name: strings.TrimSpace(f[1]), pci: normalizePCI(t, f[3]), totalMiB: total}
	}

	devs, err := Devices()
	require.NoError(t, err)
	if os.Getenv("CUDA_VISIBLE_DEVICES") == "" {
		require.Len(t, devs, len(smi), "device count vs nvidia-smi")
	}
	for _, d := range devs {
		s, ok := smi[d.UUIDString]
		require.True(t, ok, "device %d UUID %s not listed by nvidia-smi %v", d.Index, d.UUIDString, smi)
		require.Equal(t, s.name, d.Name)
		require.Equal(t, s.pci, normalizePCI(t, d.PCIBusID))
		require.InDelta(t, s.totalMiB, float64(d.TotalMemory)/testutil.MiB, s.totalMiB/100, "total memory (MiB)")
		require.GreaterOrEqual(t, d.ComputeCapability[0], 7)
		require.Positive(t, d.Multiprocessors)
		require.Positive(t, d.L2CacheBytes)
		require.Positive(t, d.MemoryBusWidth)
		require.NotNil(t, d.PCIe, "NVML should give the PCIe link")
		require.GreaterOrEqual(t, d.PCIe.GenerationMax, 3)
		require.GreaterOrEqual(t, d.PCIe.WidthMax, 8)
		t.Logf("device %d: %s %s %s cc %d.%d, %d SMs, %.0f MiB, PCIe gen %d/%d x%d/%d",
			d.Index, d.Name, d.UUIDString, d.PCIBusID, d.ComputeCapability[0], d.ComputeCapability[1],
			d.Multiprocessors, float64(d.TotalMemory)/testutil.MiB, d.PCIe.GenerationCurrent, d.PCIe.GenerationMax,
			d.PCIe.WidthCurrent, d.PCIe.WidthMax)
	}

	s, err := System()
	require.NoError(t, err)
	require.True(t, s.CUDAAvailable(), s.CUDAError)
	require.True(t, s.NVMLAvailable(), s.NVMLError)
	require.GreaterOrEqual(t, s.CUDADriverVersion, 11000)
	smiDriver, err := exec.Command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader").Output()
	require.NoError(t, err)
	require.Equal(t, strings.Split(strings.TrimSpace(string(smiDriver)), "\n")[0], s.DriverVersion)
	t.Logf("driver %s, CUDA %d, NVML %s", s.DriverVersion, s.CUDADriverVersion, s.NVMLVersion)
}

func TestGPUEngineSnapshot(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := Open(0)
	require.NoError(t, err)
	defer e.Close()
	info, err := Device(0)
	require.NoError(t, err)

	s := e.MemoryCheck()
	require.Equal(t, 0, s.Device)
	require.True(t, s.DeviceValid)
	require.True(t, s.HostValid)
	require.Equal(t, info.TotalMemory, s.DeviceTotal)
	require.LessOrEqual(t, s.DeviceFree, s.DeviceTotal)
	require.Equal(t, s.DeviceTotal-s.DeviceFree, s.DeviceUsed)
	// The engine holds the primary context, so NVML lists this process with its context's memory.
	require.True(t, s.ProcessValid, "NVML should attribute device memory to this process")
	require.Positive(t, s.ProcessDevice)
	require.LessOrEqual(t, s.ProcessDevice, s.DeviceUsed)
	t.Logf("snapshot: total %d MiB, free %d MiB, this process %d MiB", s.DeviceTotal/testutil.MiB, s.DeviceFree/testutil.MiB, s.ProcessDevice/testutil.MiB)
}

// TestGPULiveAgreesWithDriverAndNVML compares the live check with cuMemGetInfo called directly and with
// NVML's memory query, taken back to back.
func TestGPULiveAgreesWithDriverAndNVML(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := Open(0)
	require.NoError(t, err)
	defer e.Close()

	dev, err := cuda.GetDevice(0)
	require.NoError(t, err)
	ctx, err := dev.RetainPrimaryContext()
	require.NoError(t, err)
	defer ctx.Release()
	uuid, err := dev.UUID()
	require.NoError(t, err)
	nv, err := cuda.NVMLDeviceByUUID(formatUUID(uuid))
	require.NoError(t, err)

	live, err := e.MemoryCheckLive()
	require.NoError(t, err)
	free, total, err := ctx.MemGetInfo()
	require.NoError(t, err)
	nm, err := nv.MemoryInfo()
	require.NoError(t, err)

	require.True(t, live.Live)
	require.Equal(t, total, live.DeviceTotal, "total vs cuMemGetInfo")
	require.InDelta(t, float64(free), float64(live.DeviceFree), 64*testutil.MiB, "free vs cuMemGetInfo")
	// NVML counts memory the driver reserves separately; free agrees within a small slice of total.
	require.InDelta(t, float64(nm.Free), float64(live.DeviceFree), float64(total)/50, "free vs NVML")
	require.InDelta(t, float64(nm.Total), float64(live.DeviceTotal), float64(total)/50, "total vs NVML")
	t.Logf("live free %d MiB; cuMemGetInfo free %d MiB; NVML free %d MiB (reserved %d MiB, total %d MiB)",
		live.DeviceFree/testutil.MiB, free/testutil.MiB, nm.Free/testutil.MiB, nm.Reserved/testutil.MiB, nm.Total/testutil.MiB)
}

// torchHolder is a python3 process with PyTorch that allocates device memory on request.
type torchHolder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

const torchHolderScript = `
import sys, torch
dev = torch.device("cuda", int(sys.argv[1]))
torch.zeros(1, device=dev)
torch.cuda.synchronize(dev)
print("ready", flush=True)
held = []
for line in sys.stdin:
    n = int(line)
    if n == 0:
        break
    held.append(torch.empty(n, dtype=torch.uint8, device=dev))
    torch.cuda.synchronize(dev)
    print("allocated", flush=True)
`

func startTorchHolder(t *testing.T, device int) *torchHolder {
	t.Helper()
	py := "python3"
	if _, err := exec.LookPath(py); err != nil {
		if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
			t.Fatal("python3 with torch is needed for this GPU test")
		}
		t.Skip("python3 not found")
	}
	cmd := exec.Command(py, "-c", torchHolderScript, strconv.Itoa(device))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	h := &torchHolder{cmd: cmd, stdin: stdin, lines: bufio.NewScanner(stdout)}
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	h.expect(t, "ready", 120*time.Second)
	return h
}

func (h *torchHolder) expect(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		if h.lines.Scan() {
			got <- h.lines.Text()
		} else {
			got <- "EOF"
		}
	}()
	select {
	case line := <-got:
		require.Equal(t, want, line, "torch helper")
	case <-time.After(timeout):
		_ = h.cmd.Process.Kill()
		t.Fatalf("torch helper did not say %q within %v", want, timeout)
	}
}

func (h *torchHolder) allocate(t *testing.T, n uint64) {
	t.Helper()
	_, err := fmt.Fprintf(h.stdin, "%d\n", n)
	require.NoError(t, err)
	h.expect(t, "allocated", 60*time.Second)
}

// TestGPUSeesAnotherProcessAllocate: when another process allocates 4 GiB, free memory drops by that
// much in the live check at once, and in the sampled snapshot within one sample interval.
func TestGPUSeesAnotherProcessAllocate(t *testing.T) {
	testutil.RequireGPU(t)
	const interval = 100 * time.Millisecond
	const size = 4 << 30
	e, err := Open(0, WithSampleInterval(interval))
	require.NoError(t, err)
	defer e.Close()

	h := startTorchHolder(t, 0)
	time.Sleep(2 * interval) // let the sampler see the helper's context
	baseLive, err := e.MemoryCheckLive()
	require.NoError(t, err)
	baseSnap := e.MemoryCheck()

	h.allocate(t, size)
	allocatedAt := MonotonicNow()
	live, err := e.MemoryCheckLive()
	require.NoError(t, err)
	liveDrop := int64(baseLive.DeviceFree) - int64(live.DeviceFree)
	require.InDelta(t, float64(size), float64(liveDrop), 64*testutil.MiB, "live check: free should drop by 4 GiB")

	// The first snapshot taken after the allocation must appear within one interval (plus scheduling
	// slack) and show the same drop.
	deadline := time.Now().Add(interval + interval/2)
	var snap MemorySnapshot
	for {
		snap = e.MemoryCheck()
		if snap.Timestamp > allocatedAt || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	require.Greater(t, snap.Timestamp, allocatedAt, "no new snapshot within %v", interval+interval/2)
	waited := time.Duration(snap.Timestamp - allocatedAt)
	snapDrop := int64(baseSnap.DeviceFree) - int64(snap.DeviceFree)
	require.InDelta(t, float64(size), float64(snapDrop), 64*testutil.MiB, "snapshot: free should drop by 4 GiB")
	t.Logf("4 GiB allocated by another process: live drop %.1f MiB, snapshot drop %.1f MiB after %v",
		float64(liveDrop)/testutil.MiB, float64(snapDrop)/testutil.MiB, waited)
}

func TestGPUTwoEnginesAndBadIndex(t *testing.T) {
	testutil.RequireGPU(t)
	n, err := DeviceCount()
	require.NoError(t, err)
	a, err := Open(0)
	require.NoError(t, err)
	defer a.Close()
	b, err := Open(0, WithSampleInterval(10*time.Millisecond))
	require.NoError(t, err)
	require.True(t, a.MemoryCheck().DeviceValid)
	require.True(t, b.MemoryCheck().DeviceValid)
	require.NoError(t, b.Close())
	// Closing one engine releases only its retain of the shared primary context.
	live, err := a.MemoryCheckLive()
	require.NoError(t, err)
	require.True(t, live.DeviceValid)

	e, err := Open(n)
	require.Nil(t, e)
	require.ErrorIs(t, err, ErrNoDevice)
	require.Contains(t, err.Error(), fmt.Sprintf("device %d does not exist", n))
}

func TestGPUPressure(t *testing.T) {
	testutil.RequireGPU(t)
	e, err := Open(0, WithSampleInterval(0))
	require.NoError(t, err)
	defer e.Close()
	pressureChecks(t, e, e.MemoryCheck().DeviceUsed)
}
