package tests

import (
	"os"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestStatusString(t *testing.T) {
	tests := []struct {
		status int32
		want   string
	}{
		{ferryOK, "FERRY_OK"},
		{ferryErrInvalidArgument, "FERRY_ERR_INVALID_ARGUMENT"},
		{ferryErrInvalidHandle, "FERRY_ERR_INVALID_HANDLE"},
		{ferryErrNoDevice, "FERRY_ERR_NO_DEVICE"},
		{ferryErrCUDA, "FERRY_ERR_CUDA"},
		{ferryErrNVML, "FERRY_ERR_NVML"},
		{ferryErrOutOfMemory, "FERRY_ERR_OUT_OF_MEMORY"},
		{ferryErrUnsupported, "FERRY_ERR_UNSUPPORTED"},
		{ferryErrIO, "FERRY_ERR_IO"},
		{ferryErrFormat, "FERRY_ERR_FORMAT"},
		{ferryErrClosed, "FERRY_ERR_CLOSED"},
		{ferryErrTimeout, "FERRY_ERR_TIMEOUT"},
		{ferryErrLimit, "FERRY_ERR_LIMIT"},
		{ferryEndOfEpoch, "FERRY_END_OF_EPOCH"},
		{ferryErrInternal, "FERRY_ERR_INTERNAL"},
		{14, "FERRY_ERR_UNKNOWN_STATUS"},
		{98, "FERRY_ERR_UNKNOWN_STATUS"},
		{100, "FERRY_ERR_UNKNOWN_STATUS"},
		{-1, "FERRY_ERR_UNKNOWN_STATUS"},
		{1 << 30, "FERRY_ERR_UNKNOWN_STATUS"},
	}
	for _, tt := range tests {
		t.Run(tt.want+"/"+strconv.Itoa(int(tt.status)), func(t *testing.T) {
			require.Equal(t, tt.want, statusString(t, tt.status))
			require.Equal(t, tt.want, statusString(t, tt.status), "the string must not change between calls")
		})
	}
}

// headerVersion reads FERRY_VERSION_MAJOR/MINOR/PATCH from ferry.h.
func headerVersion(t *testing.T) [3]int32 {
	t.Helper()
	src, err := os.ReadFile(headerPath())
	require.NoError(t, err, "read the header (set FERRY_HEADER to its path)")
	var v [3]int32
	for i, part := range []string{"MAJOR", "MINOR", "PATCH"} {
		m := regexp.MustCompile(`(?m)^#define\s+FERRY_VERSION_` + part + `\s+(\d+)\s*$`).FindSubmatch(src)
		require.NotNil(t, m, "FERRY_VERSION_%s not found in %s", part, headerPath())
		n, err := strconv.Atoi(string(m[1]))
		require.NoError(t, err)
		v[i] = int32(n)
	}
	return v
}

func TestVersion(t *testing.T) {
	want := headerVersion(t)
	major, minor, patch := int32(-1), int32(-1), int32(-1)
	requireOK(t, func() int32 { return ferryVersion(&major, &minor, &patch) })
	require.Equal(t, want, [3]int32{major, minor, patch}, "ferry_version() differs from the header macros")

	// Any pointer may be NULL.
	requireOK(t, func() int32 { return ferryVersion(nil, nil, nil) })
	minor = -1
	requireOK(t, func() int32 { return ferryVersion(nil, &minor, nil) })
	require.Equal(t, want[1], minor)
}

// TestLastErrorThreadLocal makes two different failures on two OS threads and checks that each thread
// still sees its own message afterwards.
func TestLastErrorThreadLocal(t *testing.T) {
	defer goleak.VerifyNone(t)

	type result struct {
		status int32
		msg    string
		err    string
	}
	var (
		aFailed = make(chan struct{})
		bFailed = make(chan struct{})
		wg      sync.WaitGroup
		a, b    result
	)
	wg.Add(2)
	go func() { // thread A: a size error
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		info := systemProperties{Size: 4}
		a.status = ferrySystemInfo(&info)
		close(aFailed)
		<-bFailed
		msg, err := goString(ferryLastError())
		a.msg = msg
		if err != nil {
			a.err = err.Error()
		}
	}()
	go func() { // thread B: a handle error, made after A's
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		<-aFailed
		var dev int32
		b.status = ferryEngineDevice(0xdeadbeef, &dev)
		close(bFailed)
		msg, err := goString(ferryLastError())
		b.msg = msg
		if err != nil {
			b.err = err.Error()
		}
	}()
	wg.Wait()

	require.Empty(t, a.err)
	require.Empty(t, b.err)
	require.Equal(t, ferryErrInvalidArgument, a.status)
	require.Equal(t, ferryErrInvalidHandle, b.status)
	require.Contains(t, a.msg, "size", "thread A must still see its own error")
	require.Contains(t, b.msg, "handle", "thread B must see its own error")
	require.NotEqual(t, a.msg, b.msg)
}

// TestLastErrorSurvivesSuccess checks that a successful call does not clear the message.
func TestLastErrorSurvivesSuccess(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	info := systemProperties{Size: 0}
	require.Equal(t, ferryErrInvalidArgument, ferrySystemInfo(&info))
	msg := lastError(t)
	require.Contains(t, msg, "size")

	var n int32
	require.Equal(t, ferryOK, ferryDeviceCount(&n))
	require.Equal(t, ferryOK, ferryVersion(nil, nil, nil))
	require.Equal(t, msg, lastError(t))
}

func TestNullOutPointers(t *testing.T) {
	e := newCPUEngine(t, 0)
	cpu := defaultOptions(t)
	cpu.Device = ferryDeviceCPU

	tests := []struct {
		name string
		fn   func() int32
	}{
		{"ferry_device_count", func() int32 { return ferryDeviceCount(nil) }},
		{"ferry_device_info", func() int32 { return ferryDeviceInfo(0, nil) }},
		{"ferry_system_info", func() int32 { return ferrySystemInfo(nil) }},
		{"ferry_engine_options_init", func() int32 { return ferryEngineOptionsInit(nil) }},
		{"ferry_engine_create", func() int32 { return ferryEngineCreate(&cpu, nil) }},
		{"ferry_engine_device", func() int32 { return ferryEngineDevice(e, nil) }},
		{"ferry_memory_check", func() int32 { return ferryMemoryCheck(e, nil) }},
		{"ferry_memory_check_live", func() int32 { return ferryMemoryCheckLive(e, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireStatus(t, ferryErrInvalidArgument, tt.fn, "NULL")
			check(t, e) // the engine keeps working
		})
	}
	requireUsable(t)
}

// sizeCase is a call that takes a struct with a leading size field, on caller-provided memory.
type sizeCase struct {
	name       string
	structSize uintptr
	call       func(t *testing.T, p unsafe.Pointer) int32
	// verify checks the struct after a successful call with a larger size.
	verify func(t *testing.T, p unsafe.Pointer)
}

func sizeCases(t *testing.T) []sizeCase {
	e := newCPUEngine(t, 0)
	checkVerify := func(t *testing.T, p unsafe.Pointer) {
		s := (*memorySnapshot)(p)
		require.NotZero(t, s.Flags&memoryFlagHost)
		require.Equal(t, ferryDeviceCPU, s.Device)
		require.NotZero(t, s.HostTotalBytes)
		require.GreaterOrEqual(t, s.Sequence, uint64(1))
	}
	return []sizeCase{
		{
			name:       "ferry_memory_check",
			structSize: unsafe.Sizeof(memorySnapshot{}),
			call:       func(_ *testing.T, p unsafe.Pointer) int32 { return ferryMemoryCheck(e, (*memorySnapshot)(p)) },
			verify:     checkVerify,
		},
		{
			name:       "ferry_memory_check_live",
			structSize: unsafe.Sizeof(memorySnapshot{}),
			call:       func(_ *testing.T, p unsafe.Pointer) int32 { return ferryMemoryCheckLive(e, (*memorySnapshot)(p)) },
			verify: func(t *testing.T, p unsafe.Pointer) {
				checkVerify(t, p)
				require.NotZero(t, (*memorySnapshot)(p).Flags&memoryFlagLive)
			},
		},
		{
			name:       "ferry_system_info",
			structSize: unsafe.Sizeof(systemProperties{}),
			call:       func(_ *testing.T, p unsafe.Pointer) int32 { return ferrySystemInfo((*systemProperties)(p)) },
			verify: func(t *testing.T, p unsafe.Pointer) {
				info := (*systemProperties)(p)
				require.Equal(t, deviceCount(t), info.DeviceCount)
				_, ok := fixedString(info.CUDAStatus[:])
				require.True(t, ok, "cuda_status is not NUL-terminated")
			},
		},
		{
			name:       "ferry_engine_create",
			structSize: unsafe.Sizeof(engineOptions{}),
			call: func(t *testing.T, p unsafe.Pointer) int32 {
				opts := (*engineOptions)(p)
				opts.Device = ferryDeviceCPU
				opts.SampleIntervalMS = 0
				opts.Flags = 0
				var h engineHandle
				s := ferryEngineCreate(opts, &h)
				if s == ferryOK {
					t.Cleanup(func() { ferryEngineDestroy(h) })
					require.Equal(t, ferryDeviceCPU, check(t, h).Device)
				}
				return s
			},
		},
	}
}

// TestStructSize checks the size rule of every struct-taking call: a size below the struct is rejected
// without writing to the struct, and a larger size works without writing past the known bytes.
func TestStructSize(t *testing.T) {
	for _, sc := range sizeCases(t) {
		t.Run(sc.name, func(t *testing.T) {
			for _, size := range []uintptr{0, 4, sc.structSize - 1} {
				t.Run("size="+strconv.Itoa(int(size)), func(t *testing.T) {
					g := newGuardBuf(sc.structSize)
					g.setSize(size)
					requireStatus(t, ferryErrInvalidArgument, func() int32 { return sc.call(t, g.ptr()) }, "size")
					if sc.name == "ferry_engine_create" { // the case itself fills the options
						g.requireUntouchedFrom(t, sc.structSize)
					} else {
						g.requireUntouchedFrom(t, 4)
					}
				})
			}
			for _, size := range []uintptr{sc.structSize, sc.structSize + 32} {
				t.Run("size="+strconv.Itoa(int(size)), func(t *testing.T) {
					g := newGuardBuf(sc.structSize)
					if sc.name == "ferry_engine_create" {
						requireOK(t, func() int32 { return ferryEngineOptionsInit((*engineOptions)(g.ptr())) })
					}
					g.setSize(size)
					requireOK(t, func() int32 { return sc.call(t, g.ptr()) })
					g.requireUntouchedFrom(t, sc.structSize)
					if sc.verify != nil {
						sc.verify(t, g.ptr())
					}
				})
			}
		})
	}
	requireUsable(t)
}

// TestOptionsInitWritesOnlyTheStruct checks that ferry_engine_options_init writes the v1 struct and
// nothing after it.
func TestOptionsInitWritesOnlyTheStruct(t *testing.T) {
	g := newGuardBuf(unsafe.Sizeof(engineOptions{}))
	requireOK(t, func() int32 { return ferryEngineOptionsInit((*engineOptions)(g.ptr())) })
	g.requireUntouchedFrom(t, unsafe.Sizeof(engineOptions{}))
	require.Equal(t, engineOptions{Size: 16, Device: 0, SampleIntervalMS: 100, Flags: 0}, *(*engineOptions)(g.ptr()))
}
