package cuda

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestErrorMessages(t *testing.T) {
	e := &Error{Op: "cuMemGetInfo_v2", Code: 201, Name: "CUDA_ERROR_INVALID_CONTEXT", Desc: "invalid device context"}
	require.Equal(t, "cuMemGetInfo_v2 failed: CUDA_ERROR_INVALID_CONTEXT (201): invalid device context", e.Error())

	le := &LoadError{Library: "libcuda.so.1", Reason: "cannot load libcuda.so.1: not found"}
	require.ErrorIs(t, le, ErrNotLoaded)
	require.False(t, le.NoDevice())
	require.True(t, (&LoadError{Code: errNoDevice}).NoDevice())

	ne := &NVMLError{Op: "nvmlDeviceGetMemoryInfo_v2", Code: 3, Desc: "Not Supported"}
	require.True(t, ne.NotSupported())
	require.Equal(t, "nvmlDeviceGetMemoryInfo_v2 failed: Not Supported (3)", ne.Error())
	require.ErrorIs(t, &nvmlLoadError{msg: "x"}, ErrNVMLNotLoaded)
}

// TestDriver runs on any host: without a driver it checks the error path, with one the calls.
func TestDriver(t *testing.T) {
	err := Load()
	if err != nil {
		require.ErrorIs(t, err, ErrNotLoaded)
		n, err := DeviceCount()
		var le *LoadError
		require.ErrorAs(t, Load(), &le)
		if le.NoDevice() {
			// A driver without a GPU (a container or a CPU host with the driver package installed).
			require.Contains(t, Load().Error(), "CUDA_ERROR_NO_DEVICE")
		} else {
			require.Contains(t, Load().Error(), "libcuda.so.1")
		}
		if le.NoDevice() {
			require.NoError(t, err)
		} else {
			require.ErrorIs(t, err, ErrNotLoaded)
		}
		require.Zero(t, n)
		_, err = GetDevice(0)
		require.ErrorIs(t, err, ErrNotLoaded)
		if os.Getenv("FERRY_REQUIRE_GPU") == "1" {
			t.Fatalf("FERRY_REQUIRE_GPU=1 but the driver did not load: %v", err)
		}
		return
	}
	v, err := DriverVersion()
	require.NoError(t, err)
	require.GreaterOrEqual(t, v, 11000)
	n, err := DeviceCount()
	require.NoError(t, err)
	require.Positive(t, n)

	d, err := GetDevice(0)
	require.NoError(t, err)
	ctx, err := d.RetainPrimaryContext()
	require.NoError(t, err)
	free, total, err := ctx.MemGetInfo()
	require.NoError(t, err)
	require.Positive(t, total)
	require.LessOrEqual(t, free, total)
	devTotal, err := d.TotalMem()
	require.NoError(t, err)
	require.Equal(t, devTotal, total)
	require.NoError(t, ctx.Release())

	_, err = GetDevice(n)
	var ce *Error
	require.ErrorAs(t, err, &ce, "an out-of-range ordinal is a driver error")
	require.Equal(t, "cuDeviceGet", ce.Op)
	require.Equal(t, "CUDA_ERROR_INVALID_DEVICE", ce.Name)

	_, err = d.Attribute(Attribute(99999))
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "CUDA_ERROR_INVALID_VALUE", ce.Name)

	require.NoError(t, LoadNVML())
	drv, err := NVMLDriverVersion()
	require.NoError(t, err)
	require.NotEmpty(t, drv)
	_, err = NVMLDeviceByUUID("GPU-00000000-0000-0000-0000-000000000000")
	var ne *NVMLError
	require.ErrorAs(t, err, &ne)
	t.Logf("driver %s, CUDA %d, %d device(s)", drv, v, n)
}
