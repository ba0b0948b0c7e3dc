package monitor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ferry-ml/ferry/engine"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/process"
	"golang.org/x/sys/unix"
)

// MinSystemSampleInterval is the shortest interval RunSystemSampler accepts.
const MinSystemSampleInterval = 10 * time.Millisecond

// SystemField names one field of a SystemSample. A SystemSample's Valid mask has the field's bit set when
// the field holds a measured value; a field whose bit is clear is absent (the platform could not give it,
// or it is a rate and there was no earlier sample to compare with) and its value is meaningless, even
// when it reads as zero.
type SystemField uint32

// The fields of a SystemSample that may be absent. Time and Disks are always present.
const (
	// SysCPUPercent: CPUPercent, the whole machine's busy time since the previous sample.
	SysCPUPercent SystemField = 1 << iota
	// SysProcessCPUPercent: ProcessCPUPercent, this process's CPU time since the previous sample.
	SysProcessCPUPercent
	// SysProcessRSS: ProcessRSS.
	SysProcessRSS
	// SysMemoryPercent: MemoryPercent.
	SysMemoryPercent
	// SysMemoryUsed: MemoryUsed.
	SysMemoryUsed
	// SysMemoryTotal: MemoryTotal.
	SysMemoryTotal
	// SysLoad1: Load1.
	SysLoad1
	// SysLoad5: Load5.
	SysLoad5
	// SysLoad15: Load15.
	SysLoad15
)

// DiskField names one field of a DiskSample; DiskSample.Valid works as SystemSample.Valid does.
type DiskField uint32

// The fields of a DiskSample that may be absent. Path and Device are always present (Device is empty
// when the path's block device is unknown).
const (
	// DiskTotal: Total.
	DiskTotal DiskField = 1 << iota
	// DiskUsed: Used.
	DiskUsed
	// DiskUsedPercent: UsedPercent.
	DiskUsedPercent
	// DiskReadRate: ReadBytesPerSec, for the block device that holds the path.
	DiskReadRate
	// DiskWriteRate: WriteBytesPerSec, for the block device that holds the path.
	DiskWriteRate
)

// SystemSample is one reading of the host: CPU, memory, load and the configured paths' file systems.
// Fields that may be absent are listed by SystemField; test them with Has before use.
type SystemSample struct {
	// Time is when the sample was taken: CLOCK_MONOTONIC in nanoseconds (see MonotonicNow).
	Time uint64
	// Valid has a bit set for each present field.
	Valid SystemField

	// CPUPercent is the whole machine's busy time since the previous sample, 0 to 100.
	CPUPercent float64
	// ProcessCPUPercent is this process's CPU time since the previous sample, as a percentage of one
	// core: it may exceed 100 when the process runs on several cores.
	ProcessCPUPercent float64
	// ProcessRSS is this process's resident set size in bytes.
	ProcessRSS uint64

	// MemoryPercent is the share of the machine's memory in use, 0 to 100.
	MemoryPercent float64
	// MemoryUsed is the machine's memory in use (total less available), in bytes.
	MemoryUsed uint64
	// MemoryTotal is the machine's physical memory in bytes.
	MemoryTotal uint64

	// Load1, Load5 and Load15 are the 1, 5 and 15 minute load averages.
	Load1, Load5, Load15 float64

	// Disks has one entry per configured path, in the order given to NewSystemSampler.
	Disks []DiskSample
}

// Has reports whether field f is present.
func (s *SystemSample) Has(f SystemField) bool { return s.Valid&f == f }

// DiskSample is one reading of the file system and block device that hold a configured path.
type DiskSample struct {
	// Path is the path as configured.
	Path string
	// Device is the block device's name (as in /proc/diskstats, e.g. "sda1"), or "" when unknown; the
	// rate fields are then always absent.
	Device string
	// Valid has a bit set for each present field.
	Valid DiskField

	// Total and Used are the file system's size and used space in bytes.
	Total, Used uint64
	// UsedPercent is the share of the file system in use, 0 to 100.
	UsedPercent float64
	// ReadBytesPerSec and WriteBytesPerSec are the device's read and write rates since the previous sample.
	ReadBytesPerSec, WriteBytesPerSec float64
}

// Has reports whether field f is present.
func (d *DiskSample) Has(f DiskField) bool { return d.Valid&f == f }

// SystemSampler reads host metrics through gopsutil. Rates (CPU percentages and disk throughput) are
// differences between consecutive samples, so the first sample has them absent. It is safe for
// concurrent use; concurrent calls to Sample are serialized.
type SystemSampler struct {
	mu      sync.Mutex
	paths   []string
	devices []string // per path: the block device name, or ""
	ioNames []string // the distinct known devices, for disk.IOCounters
	proc    *process.Process
	maxProc float64 // the ceiling of ProcessCPUPercent: 100 per logical CPU

	primed   bool
	prevTime uint64
	prevCPU  cpu.TimesStat
	hasCPU   bool
	prevProc float64 // this process's user+system seconds
	hasProc  bool
	prevIO   map[string]disk.IOCountersStat
}

// NewSystemSampler returns a sampler for the host and for the file systems that hold paths (which must
// exist; the list may be empty). Each path is resolved to its block device (the longest matching mount
// point); when that fails, the path's IO rates are always absent.
func NewSystemSampler(paths []string) (*SystemSampler, error) {
	s := &SystemSampler{
		paths:   append([]string(nil), paths...),
		devices: make([]string, len(paths)),
		maxProc: 100 * float64(max(runtime.NumCPU(), 1)),
	}
	for _, p := range paths {
		if p == "" {
			return nil, fmt.Errorf("%w: system sampler: empty path", engine.ErrInvalidArgument)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%w: system sampler: path %q: %v", engine.ErrInvalidArgument, p, err)
		}
	}
	if len(paths) > 0 {
		s.resolveDevices()
	}
	if p, err := process.NewProcess(int32(os.Getpid())); err == nil {
		s.proc = p
	}
	return s, nil
}

// resolveDevices finds each path's block device: the device of the longest mount point that holds the
// path, checked against /proc/diskstats, with the path's st_dev as a fallback (for devices that mount
// tables name indirectly, such as /dev/root). Paths on file systems without a block device (overlay,
// tmpfs, network file systems) stay unresolved.
func (s *SystemSampler) resolveDevices() {
	parts, _ := disk.Partitions(true)
	counters, _ := disk.IOCounters()
	known := func(name string) bool {
		_, ok := counters[name]
		return ok
	}
	seen := map[string]bool{}
	for i, p := range s.paths {
		dev := deviceFromMounts(p, parts, known)
		if dev == "" {
			dev = deviceFromStatDev(p, known)
		}
		s.devices[i] = dev
		if dev != "" && !seen[dev] {
			seen[dev] = true
			s.ioNames = append(s.ioNames, dev)
		}
	}
}

// canonicalPath returns p as an absolute path with symbolic links resolved.
func canonicalPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if resolved, err := filepath.EvalSymlinks(p); err == nil {
		p = resolved
	}
	return filepath.Clean(p)
}

// underMount reports whether path p lies at or below mount point m.
func underMount(p, m string) bool {
	if m == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == m || strings.HasPrefix(p, m+"/")
}

func deviceFromMounts(p string, parts []disk.PartitionStat, known func(string) bool) string {
	p = canonicalPath(p)
	best, bestLen := -1, -1
	for i, part := range parts {
		m := filepath.Clean(part.Mountpoint)
		// Later entries shadow earlier ones at the same mount point, hence >=.
		if underMount(p, m) && len(m) >= bestLen {
			best, bestLen = i, len(m)
		}
	}
	if best < 0 {
		return ""
	}
	dev := parts[best].Device
	if !strings.HasPrefix(dev, "/") {
		return "" // overlay, tmpfs and the like: no block device
	}
	if resolved, err := filepath.EvalSymlinks(dev); err == nil {
		dev = resolved // /dev/mapper/x -> /dev/dm-0, /dev/disk/by-uuid/... -> /dev/sda1
	}
	name := filepath.Base(dev)
	if !known(name) {
		return ""
	}
	return name
}

func deviceFromStatDev(p string, known func(string) bool) string {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return ""
	}
	major, minor := unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)) //nolint:unconvert // Dev's type varies by platform
	if major == 0 {
		return "" // an anonymous device: overlay, tmpfs, ...
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", major, minor))
	if err != nil {
		return ""
	}
	name := filepath.Base(link)
	if !known(name) {
		return ""
	}
	return name
}

// Paths returns the configured paths.
func (s *SystemSampler) Paths() []string { return append([]string(nil), s.paths...) }

// Sample reads the host now. Fields the platform cannot give are absent (see SystemSample.Valid); rates
// are absent on the first sample. The error is non-nil (wrapping ErrIO) only when a configured path could
// not be read, for instance because it was removed; the sample is still returned, with that path's usage
// fields absent.
func (s *SystemSampler) Sample() (SystemSample, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	var out SystemSample
	now := engine.MonotonicNow()
	out.Time = now
	var dt float64 // seconds since the previous sample, 0 on the first
	if s.primed && now > s.prevTime {
		dt = float64(now-s.prevTime) / 1e9
	}

	// Whole-machine CPU. The baseline only advances when the kernel's counters moved, so that samples
	// closer together than a clock tick report over a longer window rather than nothing.
	if ts, err := cpu.Times(false); err == nil && len(ts) > 0 {
		cur := ts[0]
		if s.hasCPU {
			t0, b0 := cpuBusy(s.prevCPU)
			t1, b1 := cpuBusy(cur)
			if t1 > t0 {
				pct := (b1 - b0) / (t1 - t0) * 100
				out.CPUPercent = min(100, max(0, pct))
				out.Valid |= SysCPUPercent
				s.prevCPU = cur
			}
		} else {
			s.prevCPU, s.hasCPU = cur, true
		}
	}

	// This process.
	if s.proc != nil {
		if t, err := s.proc.Times(); err == nil {
			cur := t.User + t.System
			if s.hasProc && dt > 0 {
				pct := (cur - s.prevProc) / dt * 100
				out.ProcessCPUPercent = min(s.maxProc, max(0, pct))
				out.Valid |= SysProcessCPUPercent
			}
			s.prevProc, s.hasProc = cur, true
		}
		if mi, err := s.proc.MemoryInfo(); err == nil && mi.RSS > 0 {
			out.ProcessRSS = mi.RSS
			out.Valid |= SysProcessRSS
		}
	}

	// Memory.
	if vm, err := mem.VirtualMemory(); err == nil && vm.Total > 0 {
		out.MemoryTotal, out.MemoryUsed, out.MemoryPercent = vm.Total, vm.Used, vm.UsedPercent
		out.Valid |= SysMemoryTotal | SysMemoryUsed | SysMemoryPercent
	}

	// Load.
	if la, err := load.Avg(); err == nil {
		out.Load1, out.Load5, out.Load15 = la.Load1, la.Load5, la.Load15
		out.Valid |= SysLoad1 | SysLoad5 | SysLoad15
	}

	// Disks.
	var errs []error
	if len(s.paths) > 0 {
		var io map[string]disk.IOCountersStat
		if len(s.ioNames) > 0 {
			// IOCounters rewrites its arguments in place: pass a copy.
			io, _ = disk.IOCounters(append([]string(nil), s.ioNames...)...)
		}
		out.Disks = make([]DiskSample, len(s.paths))
		for i, p := range s.paths {
			d := &out.Disks[i]
			d.Path, d.Device = p, s.devices[i]
			if u, err := disk.Usage(p); err == nil {
				d.Total, d.Used, d.UsedPercent = u.Total, u.Used, u.UsedPercent
				d.Valid |= DiskTotal | DiskUsed | DiskUsedPercent
			} else {
				errs = append(errs, fmt.Errorf("path %q: %v", p, err))
			}
			if d.Device == "" || dt <= 0 {
				continue
			}
			cur, ok := io[d.Device]
			prev, okPrev := s.prevIO[d.Device]
			if !ok || !okPrev {
				continue
			}
			if cur.ReadBytes >= prev.ReadBytes {
				d.ReadBytesPerSec = float64(cur.ReadBytes-prev.ReadBytes) / dt
				d.Valid |= DiskReadRate
			}
			if cur.WriteBytes >= prev.WriteBytes {
				d.WriteBytesPerSec = float64(cur.WriteBytes-prev.WriteBytes) / dt
				d.Valid |= DiskWriteRate
			}
		}
		s.prevIO = io // nil after a failed read, so that no rate spans a gap
	}

	s.prevTime, s.primed = now, true
	if len(errs) > 0 {
		return out, fmt.Errorf("%w: system sampler: %w", engine.ErrIO, errors.Join(errs...))
	}
	return out, nil
}

// cpuBusy returns the total and busy CPU seconds in t, as gopsutil counts them: guest time is already
// part of user time on Linux, and idle and iowait are not busy.
func cpuBusy(t cpu.TimesStat) (total, busy float64) {
	total = t.User + t.System + t.Idle + t.Nice + t.Iowait + t.Irq + t.Softirq + t.Steal
	if runtime.GOOS != "linux" {
		total += t.Guest + t.GuestNice
	}
	return total, total - t.Idle - t.Iowait
}

// RunSystemSampler samples s once at once and then every interval, passing each sample to fn, until ctx
// is done; it then returns nil. It runs in the calling goroutine and starts none. interval must be at
// least MinSystemSampleInterval. A sample with an error (see Sample) is still passed to fn.
func RunSystemSampler(ctx context.Context, s *SystemSampler, interval time.Duration, fn func(SystemSample)) error {
	if s == nil || fn == nil {
		return fmt.Errorf("%w: system sampler: nil sampler or callback", engine.ErrInvalidArgument)
	}
	if interval < MinSystemSampleInterval {
		return fmt.Errorf("%w: system sampler: interval %v is below %v", engine.ErrInvalidArgument, interval,
			MinSystemSampleInterval)
	}
	if ctx.Err() != nil {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		smp, _ := s.Sample()
		if ctx.Err() != nil {
			return nil
		}
		fn(smp)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
