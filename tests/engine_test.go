package tests

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestEngineCreateInvalidOptions(t *testing.T) {
	n := deviceCount(t)
	noDevice := noDeviceWord(t) // without a driver the message names the missing library
	tests := []struct {
		name   string
		modify func(o *engineOptions)
		want   int32
		words  []string
	}{
		{"device=-2", func(o *engineOptions) { o.Device = -2 }, ferryErrInvalidArgument, []string{"device"}},
		{"device=-1000", func(o *engineOptions) { o.Device = -1000 }, ferryErrInvalidArgument, []string{"device"}},
		{"device=99999", func(o *engineOptions) { o.Device = 99999 }, ferryErrNoDevice, nil},
		{"device=count", func(o *engineOptions) { o.Device = n }, ferryErrNoDevice, nil},
		{"sample_interval_ms=60001", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.SampleIntervalMS = 60001 },
			ferryErrInvalidArgument, []string{"interval"}},
		{"sample_interval_ms=max", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.SampleIntervalMS = ^uint32(0) },
			ferryErrInvalidArgument, []string{"interval"}},
		{"flags=1", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.Flags = 1 }, ferryErrInvalidArgument, []string{"flags"}},
		{"flags=0x80000000", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.Flags = 0x80000000 },
			ferryErrInvalidArgument, []string{"flags"}},
		{"size=0", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.Size = 0 }, ferryErrInvalidArgument, []string{"size"}},
		{"size=4", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.Size = 4 }, ferryErrInvalidArgument, []string{"size"}},
		{"size=15", func(o *engineOptions) { o.Device = ferryDeviceCPU; o.Size = 15 }, ferryErrInvalidArgument, []string{"size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := defaultOptions(t)
			tt.modify(&o)
			words := tt.words
			if tt.want == ferryErrNoDevice {
				if n == 0 {
					words = []string{noDevice}
				} else {
					words = []string{strconv.Itoa(int(o.Device))}
				}
			}
			e := engineHandle(0x5a5a)
			requireStatus(t, tt.want, func() int32 { return ferryEngineCreate(&o, &e) }, words...)
			requireUsable(t)
		})
	}
}

func TestEngineCreateValidOptions(t *testing.T) {
	for _, interval := range []uint32{0, 1, 100, 60000} {
		t.Run("sample_interval_ms="+strconv.Itoa(int(interval)), func(t *testing.T) {
			e := newCPUEngine(t, interval)
			dev := int32(-7)
			requireOK(t, func() int32 { return ferryEngineDevice(e, &dev) })
			require.Equal(t, ferryDeviceCPU, dev)
			require.Equal(t, ferryDeviceCPU, check(t, e).Device)
		})
	}
}

// TestEngineCreateDefaultsWithoutDriver covers ferry_engine_create(NULL) on a host without a GPU.
func TestEngineCreateDefaultsWithoutDriver(t *testing.T) {
	if deviceCount(t) > 0 {
		t.Skip("a GPU is visible; the no-driver case runs in TestNoDriver")
	}
	var e engineHandle
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryEngineCreate(nil, &e) }, noDeviceWord(t))
	o := defaultOptions(t)
	requireStatus(t, ferryErrNoDevice, func() int32 { return ferryEngineCreate(&o, &e) }, noDeviceWord(t))
	requireUsable(t)
}

// handleCalls are the calls that take an engine handle, destroy last.
var handleCalls = []struct {
	name string
	fn   func(e engineHandle) int32
}{
	{"ferry_engine_device", func(e engineHandle) int32 { var d int32; return ferryEngineDevice(e, &d) }},
	{"ferry_engine_sample_now", func(e engineHandle) int32 { return ferryEngineSampleNow(e) }},
	{"ferry_memory_check", func(e engineHandle) int32 {
		s := memorySnapshot{Size: uint32(unsafe.Sizeof(memorySnapshot{}))}
		return ferryMemoryCheck(e, &s)
	}},
	{"ferry_memory_check_live", func(e engineHandle) int32 {
		s := memorySnapshot{Size: uint32(unsafe.Sizeof(memorySnapshot{}))}
		return ferryMemoryCheckLive(e, &s)
	}},
	{"ferry_engine_destroy", func(e engineHandle) int32 { return ferryEngineDestroy(e) }},
}

func TestInvalidHandles(t *testing.T) {
	live := newCPUEngine(t, 0)
	destroyed := engineHandle(0)
	{
		o := defaultOptions(t)
		o.Device = ferryDeviceCPU
		requireOK(t, func() int32 { return ferryEngineCreate(&o, &destroyed) })
		requireOK(t, func() int32 { return ferryEngineDestroy(destroyed) })
	}
	handles := []struct {
		name string
		h    engineHandle
	}{
		{"0x1234", 0x1234},
		{"0xdeadbeef", 0xdeadbeef},
		{"all-ones", engineHandle(^uintptr(0))},
		{"destroyed", destroyed},
	}
	for _, bit := range []uint{0, 1, 2, 7, 8, 15, 16, 31, 32, 47, 48, 63} {
		if f := live ^ engineHandle(uintptr(1)<<bit); f != 0 {
			handles = append(handles, struct {
				name string
				h    engineHandle
			}{"bit" + strconv.Itoa(int(bit)) + "-flipped", f})
		}
	}
	for _, hc := range handleCalls {
		t.Run(hc.name, func(t *testing.T) {
			for _, h := range handles {
				t.Run(h.name, func(t *testing.T) {
					requireStatus(t, ferryErrInvalidHandle, func() int32 { return hc.fn(h.h) }, "handle")
				})
			}
			t.Run("NULL", func(t *testing.T) {
				if hc.name == "ferry_engine_destroy" {
					requireOK(t, func() int32 { return hc.fn(0) })
					return
				}
				requireStatus(t, ferryErrInvalidHandle, func() int32 { return hc.fn(0) }, "NULL")
			})
			// The live engine is untouched by all of that.
			s := check(t, live)
			require.Equal(t, ferryDeviceCPU, s.Device)
			require.NotZero(t, s.Flags&memoryFlagHost)
		})
	}
	requireUsable(t)
}

func TestDestroy(t *testing.T) {
	o := defaultOptions(t)
	o.Device = ferryDeviceCPU
	var e engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &e) })
	requireOK(t, func() int32 { return ferryEngineDestroy(e) })
	requireStatus(t, ferryErrInvalidHandle, func() int32 { return ferryEngineDestroy(e) }, "handle")
	requireOK(t, func() int32 { return ferryEngineDestroy(0) })

	// A new engine must not bring the destroyed handle back to life.
	e2 := newCPUEngine(t, 0)
	require.NotEqual(t, e, e2, "a destroyed handle value was handed out again")
	for _, hc := range handleCalls {
		requireStatus(t, ferryErrInvalidHandle, func() int32 { return hc.fn(e) }, "handle")
	}
	check(t, e2)
}

// TestEngineLimit fills the registry up to FERRY_MAX_ENGINES and checks the next create fails with
// FERRY_ERR_LIMIT, and that creating works again once one is destroyed.
func TestEngineLimit(t *testing.T) {
	o := defaultOptions(t)
	o.Device = ferryDeviceCPU
	o.SampleIntervalMS = 0
	var engines []engineHandle
	t.Cleanup(func() {
		for _, e := range engines {
			ferryEngineDestroy(e)
		}
	})
	for len(engines) < maxEngines {
		var e engineHandle
		requireOK(t, func() int32 { return ferryEngineCreate(&o, &e) })
		engines = append(engines, e)
	}
	var extra engineHandle
	requireStatus(t, ferryErrLimit, func() int32 { return ferryEngineCreate(&o, &extra) }, strconv.Itoa(maxEngines))

	requireOK(t, func() int32 { return ferryEngineDestroy(engines[0]) })
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &engines[0]) })
	for _, e := range engines {
		check(t, e)
	}
}

// meminfo reads a field of /proc/meminfo in bytes.
func meminfo(t *testing.T, field string) uint64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		require.NoError(t, err)
		return kb * 1024
	}
	t.Fatalf("%s not in /proc/meminfo", field)
	return 0
}

func requireCPUSnapshot(t *testing.T, s memorySnapshot) {
	t.Helper()
	require.Equal(t, ferryDeviceCPU, s.Device)
	require.NotZero(t, s.Flags&memoryFlagHost, "FERRY_MEMORY_F_HOST")
	require.Zero(t, s.Flags&memoryFlagDevice, "FERRY_MEMORY_F_DEVICE on a CPU engine")
	require.Zero(t, s.Flags&memoryFlagProcess, "FERRY_MEMORY_F_PROCESS on a CPU engine")
	require.GreaterOrEqual(t, s.Sequence, uint64(1))
	require.Zero(t, s.DeviceTotalBytes)
	require.Zero(t, s.DeviceFreeBytes)
	require.Zero(t, s.DeviceUsedBytes)
	require.Zero(t, s.ProcessDeviceBytes)
	require.Equal(t, int32(pressureNone), s.Level)

	total := meminfo(t, "MemTotal")
	require.InDelta(t, float64(total), float64(s.HostTotalBytes), float64(total)/100, "host_total_bytes vs MemTotal")
	require.Greater(t, s.HostAvailableBytes, uint64(0))
	require.LessOrEqual(t, s.HostAvailableBytes, s.HostTotalBytes)
	avail := meminfo(t, "MemAvailable")
	require.InDelta(t, float64(avail), float64(s.HostAvailableBytes), float64(total)/10, "host_available_bytes vs MemAvailable")

	// A fresh engine has allocated nothing.
	require.Zero(t, s.EngineAllocatedBytes)
	require.Zero(t, s.EngineReservedBytes)
	require.Zero(t, s.EnginePeakBytes)
	require.Zero(t, s.EngineAllocCount)
	require.Zero(t, s.EngineAllocFailures)
	require.Zero(t, s.HostPinnedBytes)
	require.Zero(t, s.WarnThresholdBytes)
	require.Zero(t, s.CriticalThresholdBytes)
}

func TestCPUEngineSnapshot(t *testing.T) {
	before := monotonicNS(t)
	e := newCPUEngine(t, 0) // sampler off: the snapshot is the one taken at creation
	after := monotonicNS(t)

	s := check(t, e)
	returned := monotonicNS(t)
	requireCPUSnapshot(t, s)
	require.GreaterOrEqual(t, s.TimestampNS, before, "timestamp_ns is CLOCK_MONOTONIC, taken at creation")
	require.LessOrEqual(t, s.TimestampNS, after)
	require.Equal(t, s.TimestampNS, s.SampleTimestampNS)
	require.LessOrEqual(t, s.TimestampNS+s.AgeNS, returned, "timestamp_ns + age_ns is when the call returned")
	require.Less(t, s.AgeNS, uint64(5*time.Second))
	require.Zero(t, s.Flags&memoryFlagLive)

	// Without a sampler, the snapshot only ages.
	time.Sleep(50 * time.Millisecond)
	s2 := check(t, e)
	require.Equal(t, s.Sequence, s2.Sequence, "sample_interval_ms=0 must not sample in the background")
	require.Equal(t, s.TimestampNS, s2.TimestampNS)
	require.GreaterOrEqual(t, s2.AgeNS, uint64(50*time.Millisecond))
}

func TestCPUEngineCheckLive(t *testing.T) {
	e := newCPUEngine(t, 0)
	sampled := check(t, e)
	before := monotonicNS(t)
	s := checkLive(t, e)
	after := monotonicNS(t)
	requireCPUSnapshot(t, s)
	require.NotZero(t, s.Flags&memoryFlagLive, "FERRY_MEMORY_F_LIVE")
	require.GreaterOrEqual(t, s.TimestampNS, before, "a live check queries now")
	require.LessOrEqual(t, s.TimestampNS, after)
	require.GreaterOrEqual(t, s.TimestampNS, s.SampleTimestampNS)
	require.GreaterOrEqual(t, s.SampleTimestampNS, sampled.SampleTimestampNS)

	// The cached check that follows is not live.
	require.Zero(t, check(t, e).Flags&memoryFlagLive)
}

func TestSampleNow(t *testing.T) {
	e := newCPUEngine(t, 0)
	s1 := check(t, e)
	requireOK(t, func() int32 { return ferryEngineSampleNow(e) })
	s2 := check(t, e)
	require.Equal(t, s1.Sequence+1, s2.Sequence, "ferry_engine_sample_now publishes exactly one sample")
	require.Greater(t, s2.TimestampNS, s1.TimestampNS)
	requireCPUSnapshot(t, s2)
	for i := 0; i < 5; i++ {
		requireOK(t, func() int32 { return ferryEngineSampleNow(e) })
	}
	require.Equal(t, s2.Sequence+5, check(t, e).Sequence)
}

func TestSequenceGrows(t *testing.T) {
	e := newCPUEngine(t, 5)
	s1 := check(t, e)
	time.Sleep(100 * time.Millisecond)
	s2 := check(t, e)
	require.Greater(t, s2.Sequence, s1.Sequence, "a 5 ms sampler must have sampled within 100 ms")
	require.Greater(t, s2.TimestampNS, s1.TimestampNS)
	require.Less(t, s2.AgeNS, uint64(time.Second), "the snapshot of a 5 ms sampler is fresh")
	requireCPUSnapshot(t, s2)
}

// TestCheckDuringDestroy hammers each handle call from 8 goroutines while another goroutine destroys
// the engine: every call returns FERRY_OK, FERRY_ERR_INVALID_HANDLE, or FERRY_ERR_CLOSED (a call that was
// already under way when the destruction began, as ferry.h allows), and once a goroutine has seen a
// failure it never sees OK again.
func TestCheckDuringDestroy(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, hc := range handleCalls[:len(handleCalls)-1] {
		t.Run(hc.name, func(t *testing.T) {
			for round := 0; round < 5; round++ {
				hammerDuringDestroy(t, hc.fn)
			}
		})
	}
	requireUsable(t)
}

func hammerDuringDestroy(t *testing.T, fn func(engineHandle) int32) {
	t.Helper()
	o := defaultOptions(t)
	o.Device = ferryDeviceCPU
	o.SampleIntervalMS = 1
	var e engineHandle
	requireOK(t, func() int32 { return ferryEngineCreate(&o, &e) })

	const workers = 8
	var (
		wg          sync.WaitGroup
		started     sync.WaitGroup
		destroyed   atomic.Bool
		ok, invalid atomic.Int64
		bad         = make(chan string, workers)
	)
	started.Add(workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sawInvalid := false
			for i := 0; ; i++ {
				if i == 10 {
					started.Done()
				}
				done := destroyed.Load() // read before the call: a call after destroy returned must fail
				switch s := fn(e); s {
				case ferryOK:
					if sawInvalid {
						bad <- "FERRY_OK after FERRY_ERR_INVALID_HANDLE or FERRY_ERR_CLOSED"
						return
					}
					if done {
						bad <- "FERRY_OK after ferry_engine_destroy returned"
						return
					}
					ok.Add(1)
				case ferryErrInvalidHandle, ferryErrClosed:
					sawInvalid = true
					invalid.Add(1)
					if done {
						if i < 10 {
							started.Done()
						}
						return
					}
				default:
					str, _ := goString(ferryStatusString(s))
					bad <- "unexpected status " + str
					if i < 10 {
						started.Done()
					}
					return
				}
			}
		}()
	}
	started.Wait()
	var destroyStatus int32
	var wgDestroy sync.WaitGroup
	wgDestroy.Add(1)
	go func() {
		defer wgDestroy.Done()
		destroyStatus = ferryEngineDestroy(e)
		destroyed.Store(true)
	}()
	wgDestroy.Wait()
	wg.Wait()
	close(bad)
	var msgs []string
	for msg := range bad {
		msgs = append(msgs, msg)
	}
	require.Empty(t, msgs, "a call racing with ferry_engine_destroy must complete or return FERRY_ERR_INVALID_HANDLE / FERRY_ERR_CLOSED")
	require.Equal(t, ferryOK, destroyStatus)
	require.Greater(t, ok.Load(), int64(0))
	require.Greater(t, invalid.Load(), int64(0))
}
