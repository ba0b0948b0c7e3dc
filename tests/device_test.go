package tests

import (
	"bytes"
	"encoding/csv"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

func systemInfo(t *testing.T) systemProperties {
	t.Helper()
	info := systemProperties{Size: uint32(unsafe.Sizeof(systemProperties{}))}
	requireOK(t, func() int32 { return ferrySystemInfo(&info) })
	return info
}

func deviceInfo(t *testing.T, index int32) deviceProperties {
	t.Helper()
	info := deviceProperties{Size: uint32(unsafe.Sizeof(deviceProperties{}))}
	requireOK(t, func() int32 { return ferryDeviceInfo(index, &info) })
	return info
}

func str(t *testing.T, field string, b []byte) string {
	t.Helper()
	s, ok := fixedString(b)
	require.True(t, ok, "%s is not NUL-terminated", field)
	return s
}

func TestDeviceCountStable(t *testing.T) {
	n := deviceCount(t)
	for i := 0; i < 3; i++ {
		require.Equal(t, n, deviceCount(t))
	}
	require.Equal(t, n, systemInfo(t).DeviceCount)
}

// TestSystemInfo checks that the flags, versions and status strings agree with each other.
func TestSystemInfo(t *testing.T) {
	info := systemInfo(t)
	cudaStatus := str(t, "cuda_status", info.CUDAStatus[:])
	nvmlStatus := str(t, "nvml_status", info.NVMLStatus[:])
	driver := str(t, "driver_version", info.DriverVersion[:])
	nvml := str(t, "nvml_version", info.NVMLVersion[:])
	require.Zero(t, info.Flags&^uint32(systemFlagCUDA|systemFlagNVML), "unknown flags")

	if info.Flags&systemFlagCUDA != 0 {
		require.Empty(t, cudaStatus)
		require.Greater(t, info.CUDADriverVersion, int32(0))
	} else {
		require.Contains(t, cudaStatus, noDeviceWord(t), "cuda_status names the missing library, or the driver's no-device error")
		require.Zero(t, info.CUDADriverVersion)
		require.Zero(t, info.DeviceCount)
	}
	if info.Flags&systemFlagNVML != 0 {
		require.Empty(t, nvmlStatus)
		require.NotEmpty(t, driver)
		require.NotEmpty(t, nvml)
	} else {
		require.NotEmpty(t, nvmlStatus, "nvml_status says why NVML is unusable")
		require.Empty(t, driver)
		require.Empty(t, nvml)
	}
}

// noDeviceWord is what a no-device message names on this host: the missing driver library, or the
// driver's CUDA_ERROR_NO_DEVICE where the driver is installed without a GPU (a container, a CPU host).
func noDeviceWord(t *testing.T) string {
	info := systemInfo(t)
	if strings.Contains(str(t, "cuda_status", info.CUDAStatus[:]), "CUDA_ERROR_NO_DEVICE") {
		return "CUDA_ERROR_NO_DEVICE"
	}
	return "libcuda.so.1"
}

// TestDeviceInfoUnknownIndex covers indices that name no device.
func TestDeviceInfoUnknownIndex(t *testing.T) {
	n := deviceCount(t)
	for _, index := range []int32{-2, ferryDeviceCPU, 99999, n, n + 1} {
		t.Run(strconv.Itoa(int(index)), func(t *testing.T) {
			g := newGuardBuf(unsafe.Sizeof(deviceProperties{}))
			g.setSize(unsafe.Sizeof(deviceProperties{}))
			word := noDeviceWord(t)
			if n > 0 {
				word = strconv.Itoa(int(index))
			}
			requireStatus(t, ferryErrNoDevice,
				func() int32 { return ferryDeviceInfo(index, (*deviceProperties)(g.ptr())) }, word)
			g.requireUntouchedFrom(t, 4)
			requireUsable(t)
		})
	}
}

// The no-driver case runs in a child process, since the driver path is read at the first GPU call.
const noDriverEnv = "FERRY_TEST_NO_DRIVER_CHILD"

// TestNoDriver re-runs TestNoDriverChild with FERRY_CUDA_LIBRARY and FERRY_NVML_LIBRARY pointing at
// files that do not exist, which simulates a host without the NVIDIA driver even on a GPU host.
func TestNoDriver(t *testing.T) {
	if os.Getenv(noDriverEnv) == "1" {
		t.Skip("in the child process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoDriverChild$", "-test.count=1", "-test.v")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FERRY_REQUIRE_GPU=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		noDriverEnv+"=1",
		"FERRY_LIBRARY="+libraryPath,
		"FERRY_CUDA_LIBRARY=/nonexistent/libcuda.so.1",
		"FERRY_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1",
	)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child failed:\n%s", out)
	require.Contains(t, string(out), "--- PASS: TestNoDriverChild", "child did not run the test:\n%s", out)
}

// TestNoDriverChild is the child of TestNoDriver; it does nothing unless run by it.
func TestNoDriverChild(t *testing.T) {
	if os.Getenv(noDriverEnv) != "1" {
		t.Skip("runs only as the child of TestNoDriver")
	}
	// No ferry call has failed in this process yet.
	_, msg := call(t, func() int32 { return ferryOK })
	require.Empty(t, msg, "ferry_last_error() before any failure")

	require.Zero(t, deviceCount(t))

	var e engineHandle
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryEngineCreate(nil, &e) }, "libcuda.so.1")
	o := defaultOptions(t)
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryEngineCreate(&o, &e) }, "libcuda.so.1")

	info := deviceProperties{Size: uint32(unsafe.Sizeof(deviceProperties{}))}
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryDeviceInfo(0, &info) }, "libcuda.so.1")

	sys := systemInfo(t)
	require.Zero(t, sys.Flags)
	require.Zero(t, sys.CUDADriverVersion)
	require.Zero(t, sys.DeviceCount)
	require.Contains(t, str(t, "cuda_status", sys.CUDAStatus[:]), "libcuda.so.1")
	require.Contains(t, str(t, "nvml_status", sys.NVMLStatus[:]), "libnvidia-ml.so.1")
	require.Empty(t, str(t, "driver_version", sys.DriverVersion[:]))
	require.Empty(t, str(t, "nvml_version", sys.NVMLVersion[:]))

	cpu := newCPUEngine(t, 0)
	requireCPUSnapshot(t, check(t, cpu))
	requireCPUSnapshot(t, checkLive(t, cpu))
	requireUsable(t)
}

// nvidiaSMI runs nvidia-smi --query-gpu=fields and returns one row per GPU.
func nvidiaSMI(t *testing.T, fields ...string) [][]string {
	t.Helper()
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
			t.Fatalf("FERRY_REQUIRE_GPU=1 but nvidia-smi is not on PATH")
		}
		t.Skip("nvidia-smi is not on PATH")
	}
	out, err := exec.Command(path, "--query-gpu="+strings.Join(fields, ","), "--format=csv,noheader,nounits").Output()
	require.NoError(t, err)
	r := csv.NewReader(bytes.NewReader(out))
	r.TrimLeadingSpace = true
	rows, err := r.ReadAll()
	require.NoError(t, err)
	require.NotEmpty(t, rows)
	return rows
}

// TestGPUDeviceInfo checks ferry_device_info against nvidia-smi, matching devices by UUID since the
// CUDA ordinal and nvidia-smi's index may differ.
func TestGPUDeviceInfo(t *testing.T) {
	n := requireGPU(t)
	rows := nvidiaSMI(t, "uuid", "name", "pci.bus_id", "memory.total")
	byUUID := map[string][]string{}
	for _, r := range rows {
		byUUID[r[0]] = r
	}
	for i := int32(0); i < n; i++ {
		info := deviceInfo(t, i)
		require.Equal(t, i, info.Index)
		uuid := str(t, "uuid_string", info.UUIDString[:])
		row, ok := byUUID[uuid]
		require.True(t, ok, "device %d: uuid %q not listed by nvidia-smi", i, uuid)
		require.Equal(t, row[1], str(t, "name", info.Name[:]))

		// ferry prints a 4-digit domain in lower case; nvidia-smi an 8-digit one in upper case.
		bus := str(t, "pci_bus_id", info.PCIBusID[:])
		require.Equal(t, strings.ToLower(row[2][len(row[2])-len(bus):]), bus)
		require.Regexp(t, `^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$`, bus)

		// The raw UUID bytes spell the string.
		hex := strings.ReplaceAll(strings.TrimPrefix(uuid, "GPU-"), "-", "")
		require.Equal(t, hex, bytesHex(info.UUID[:]))

		mib, err := strconv.ParseUint(row[3], 10, 64)
		require.NoError(t, err)
		require.InDelta(t, float64(mib), float64(info.TotalMemoryBytes>>20), float64(mib)/100, "total memory vs nvidia-smi")

		require.GreaterOrEqual(t, info.ComputeCapabilityMajor, int32(7))
		require.Greater(t, info.MultiprocessorCount, int32(0))
		require.Greater(t, info.L2CacheBytes, int32(0))
		require.Greater(t, info.MemoryBusWidthBits, int32(0))
		require.Greater(t, info.AsyncEngineCount, int32(0))
		if info.Flags&deviceFlagPCIE != 0 {
			require.Greater(t, info.PCIeGenerationCurrent, int32(0))
			require.LessOrEqual(t, info.PCIeGenerationCurrent, info.PCIeGenerationMax)
			require.Greater(t, info.PCIeWidthCurrent, int32(0))
			require.LessOrEqual(t, info.PCIeWidthCurrent, info.PCIeWidthMax)
		}
	}
}

func bytesHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&0xf])
	}
	return string(out)
}

// TestGPUDeviceInfoSize checks the size rule of ferry_device_info on a device that exists.
func TestGPUDeviceInfoSize(t *testing.T) {
	requireGPU(t)
	size := unsafe.Sizeof(deviceProperties{})
	for _, s := range []uintptr{0, 4, size - 1} {
		g := newGuardBuf(size)
		g.setSize(s)
		requireStatus(t, ferryErrInvalidArgument, func() int32 { return ferryDeviceInfo(0, (*deviceProperties)(g.ptr())) }, "size")
		g.requireUntouchedFrom(t, 4)
	}
	g := newGuardBuf(size)
	g.setSize(size + 32)
	requireOK(t, func() int32 { return ferryDeviceInfo(0, (*deviceProperties)(g.ptr())) })
	g.requireUntouchedFrom(t, size)
	require.Equal(t, deviceInfo(t, 0).TotalMemoryBytes, (*deviceProperties)(g.ptr()).TotalMemoryBytes)
}

// TestGPUSystemInfo checks the driver stack against nvidia-smi.
func TestGPUSystemInfo(t *testing.T) {
	n := requireGPU(t)
	info := systemInfo(t)
	require.NotZero(t, info.Flags&systemFlagCUDA)
	require.Equal(t, n, info.DeviceCount)
	require.Greater(t, info.CUDADriverVersion, int32(0))
	if info.Flags&systemFlagNVML != 0 {
		rows := nvidiaSMI(t, "driver_version")
		require.Equal(t, rows[0][0], str(t, "driver_version", info.DriverVersion[:]))
	}
}

func requireGPUSnapshot(t *testing.T, s memorySnapshot, device int32, total uint64) {
	t.Helper()
	require.Equal(t, device, s.Device)
	require.NotZero(t, s.Flags&memoryFlagDevice, "FERRY_MEMORY_F_DEVICE")
	require.NotZero(t, s.Flags&memoryFlagHost, "FERRY_MEMORY_F_HOST")
	require.Equal(t, total, s.DeviceTotalBytes, "device_total_bytes vs ferry_device_info")
	require.Greater(t, s.DeviceFreeBytes, uint64(0))
	require.LessOrEqual(t, s.DeviceFreeBytes, s.DeviceTotalBytes)
	require.Equal(t, s.DeviceTotalBytes-s.DeviceFreeBytes, s.DeviceUsedBytes)
	if s.Flags&memoryFlagProcess != 0 {
		// The engine holds the primary context, which takes device memory.
		require.Greater(t, s.ProcessDeviceBytes, uint64(0))
		require.LessOrEqual(t, s.ProcessDeviceBytes, s.DeviceUsedBytes)
	}
	require.GreaterOrEqual(t, s.Sequence, uint64(1))
}

func TestGPUEngine(t *testing.T) {
	requireGPU(t)
	total := deviceInfo(t, 0).TotalMemoryBytes
	e := newEngine(t, 0, 100)

	dev := int32(-7)
	requireOK(t, func() int32 { return ferryEngineDevice(e, &dev) })
	require.Equal(t, int32(0), dev)

	sampled := check(t, e)
	requireGPUSnapshot(t, sampled, 0, total)
	require.Zero(t, sampled.Flags&memoryFlagLive)

	before := monotonicNS(t)
	live := checkLive(t, e)
	requireGPUSnapshot(t, live, 0, total)
	require.NotZero(t, live.Flags&memoryFlagLive, "FERRY_MEMORY_F_LIVE")
	require.GreaterOrEqual(t, live.TimestampNS, before)
	require.InDelta(t, float64(sampled.DeviceFreeBytes), float64(live.DeviceFreeBytes), float64(1<<30),
		"live free memory within 1 GiB of the sampled one")

	// The device's free memory as nvidia-smi sees it, within 1 GiB.
	info := deviceInfo(t, 0)
	uuid := str(t, "uuid_string", info.UUIDString[:])
	for _, row := range nvidiaSMI(t, "uuid", "memory.total", "memory.used") {
		if row[0] != uuid {
			continue
		}
		usedMiB, err := strconv.ParseUint(row[2], 10, 64)
		require.NoError(t, err)
		live = checkLive(t, e)
		require.InDelta(t, float64(usedMiB<<20), float64(live.DeviceUsedBytes), float64(1<<30), "used memory vs nvidia-smi")
	}
}

func TestGPUEngineCreateOutOfRange(t *testing.T) {
	n := requireGPU(t)
	o := defaultOptions(t)
	o.Device = n
	var e engineHandle
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryEngineCreate(&o, &e) }, strconv.Itoa(int(n)))
	requireUsable(t)
}

func TestGPUTwoEnginesOneDevice(t *testing.T) {
	requireGPU(t)
	total := deviceInfo(t, 0).TotalMemoryBytes
	o := defaultOptions(t)
	var a, b engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &a) })
	t.Cleanup(func() { ferryEngineDestroy(a) })
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &b) })
	t.Cleanup(func() { ferryEngineDestroy(b) })
	require.NotEqual(t, a, b)

	requireGPUSnapshot(t, checkLive(t, a), 0, total)
	requireGPUSnapshot(t, checkLive(t, b), 0, total)

	// Destroying one leaves the other, and the shared primary context, working.
	requireOK(t, func() int32 { return ferryEngineDestroy(a) })
	requireGPUSnapshot(t, checkLive(t, b), 0, total)
	requireOK(t, func() int32 { return ferryEngineSampleNow(b) })
	requireGPUSnapshot(t, check(t, b), 0, total)
}
