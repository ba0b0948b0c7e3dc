package engine

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-ml/ferry/engine/internal/cuda"
)

// DevicePtr is a device address.
type DevicePtr = cuda.DevicePtr

// sizeClass rounds a request up to its pool size class: powers of two from 4 KiB up to 2 MiB, then
// multiples of 2 MiB. Freed blocks are cached per class and reused, so steady-state allocation never
// reaches the driver.
func sizeClass(n int) int {
	const small, large = 4 << 10, 2 << 20
	if n <= small {
		return small
	}
	if n <= large {
		c := small
		for c < n {
			c <<= 1
		}
		return c
	}
	return (n + large - 1) / large * large
}

// HostBuffer is host memory from a HostPool: page-locked on a GPU engine (so the DMA engines can read it
// directly), page-aligned anonymous memory on the CPU engine. It is never Go memory, so its address may be
// handed to C, to DLPack consumers and to the GPU.
type HostBuffer struct {
	ptr   unsafe.Pointer
	size  int // bytes requested
	class int // bytes held
}

// Bytes is the buffer as a slice of its requested size.
func (b *HostBuffer) Bytes() []byte { return unsafe.Slice((*byte)(b.ptr), b.size) }

// Pointer is the buffer's address.
func (b *HostBuffer) Pointer() unsafe.Pointer { return b.ptr }

// Len is the requested size.
func (b *HostBuffer) Len() int { return b.size }

// HostPool hands out host buffers and caches freed ones by size class. On a GPU engine the memory is
// page-locked with cuMemHostAlloc, which costs about 0.4 s per GiB, so pools are sized up front and
// reused across epochs and iterators; Trim gives cached memory back. Safe for concurrent use.
type HostPool struct {
	e      *Engine
	mu     sync.Mutex
	cached map[int][]unsafe.Pointer
	closed bool
}

func newHostPool(e *Engine) *HostPool { return &HostPool{e: e, cached: map[int][]unsafe.Pointer{}} }

// Alloc returns a buffer of n bytes (n > 0), from the cache when a block of its class is free.
func (p *HostPool) Alloc(n int) (*HostBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: host buffer of %d bytes", ErrInvalidArgument, n)
	}
	class := sizeClass(n)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: host pool of the engine on device %d", ErrClosed, p.e.device)
	}
	if blocks := p.cached[class]; len(blocks) > 0 {
		ptr := blocks[len(blocks)-1]
		p.cached[class] = blocks[:len(blocks)-1]
		p.mu.Unlock()
		return &HostBuffer{ptr: ptr, size: n, class: class}, nil
	}
	p.mu.Unlock()
	ptr, err := p.allocate(class)
	if err != nil {
		p.e.acct.Failure()
		return nil, err
	}
	return &HostBuffer{ptr: ptr, size: n, class: class}, nil
}

func (p *HostPool) allocate(class int) (unsafe.Pointer, error) {
	if p.e.gpu {
		ptr, err := p.e.ctx.MemHostAlloc(class)
		if err != nil {
			return nil, fmt.Errorf("%w: cannot page-lock %d bytes of host memory: %w", ErrOutOfMemory, class, err)
		}
		p.e.acct.Pin(uint64(class))
		return ptr, nil
	}
	mem, err := unix.Mmap(-1, 0, class, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot map %d bytes of host memory: %v", ErrOutOfMemory, class, err)
	}
	return unsafe.Pointer(&mem[0]), nil
}

func (p *HostPool) release(ptr unsafe.Pointer, class int) error {
	if p.e.gpu {
		if err := p.e.ctx.MemFreeHost(ptr); err != nil {
			return err
		}
		p.e.acct.Unpin(uint64(class))
		return nil
	}
	return unix.Munmap(unsafe.Slice((*byte)(ptr), class))
}

// Free returns b to the pool's cache. b must not be used afterwards.
func (p *HostPool) Free(b *HostBuffer) {
	if b == nil || b.ptr == nil {
		return
	}
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.cached[b.class] = append(p.cached[b.class], b.ptr)
	}
	p.mu.Unlock()
	if closed {
		_ = p.release(b.ptr, b.class)
	}
	b.ptr = nil
}

// Trim gives every cached block back to the system and returns the bytes released.
func (p *HostPool) Trim() (uint64, error) {
	p.mu.Lock()
	cached := p.cached
	p.cached = map[int][]unsafe.Pointer{}
	p.mu.Unlock()
	var released uint64
	var errs []error
	for class, blocks := range cached {
		for _, ptr := range blocks {
			if err := p.release(ptr, class); err != nil {
				errs = append(errs, err)
				continue
			}
			released += uint64(class)
		}
	}
	return released, errors.Join(errs...)
}

func (p *HostPool) close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_, err := p.Trim()
	return err
}

// DeviceBuffer is device memory from a DevicePool.
type DeviceBuffer struct {
	ptr   DevicePtr
	size  int
	class int
}

// Ptr is the buffer's device address.
func (b *DeviceBuffer) Ptr() DevicePtr { return b.ptr }

// Len is the requested size.
func (b *DeviceBuffer) Len() int { return b.size }

// DevicePool hands out device memory and caches freed blocks by size class, like the caching allocators
// of the frameworks. Its bytes show in the memory check: engine_reserved (held from the driver),
// engine_allocated (handed out), the peak, the allocation count and failures. Safe for concurrent use.
type DevicePool struct {
	e      *Engine
	mu     sync.Mutex
	cached map[int][]DevicePtr
	closed bool
}

func newDevicePool(e *Engine) *DevicePool { return &DevicePool{e: e, cached: map[int][]DevicePtr{}} }

// Alloc returns n bytes of device memory (n > 0). It fails with ErrUnsupported on the CPU engine.
func (p *DevicePool) Alloc(n int) (*DeviceBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: device buffer of %d bytes", ErrInvalidArgument, n)
	}
	if !p.e.gpu {
		return nil, fmt.Errorf("%w: the CPU engine has no device memory", ErrUnsupported)
	}
	class := sizeClass(n)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: device pool of the engine on device %d", ErrClosed, p.e.device)
	}
	var ptr DevicePtr
	if blocks := p.cached[class]; len(blocks) > 0 {
		ptr = blocks[len(blocks)-1]
		p.cached[class] = blocks[:len(blocks)-1]
	}
	p.mu.Unlock()
	if ptr == 0 {
		var err error
		if ptr, err = p.e.ctx.MemAlloc(class); err != nil {
			p.e.acct.Failure()
			return nil, fmt.Errorf("%w: cannot allocate %d bytes on device %d: %w", ErrOutOfMemory, class, p.e.device, err)
		}
		p.e.acct.Reserve(uint64(class))
	}
	p.e.acct.Allocate(uint64(class))
	return &DeviceBuffer{ptr: ptr, size: n, class: class}, nil
}

// Free returns b to the cache. b must not be used afterwards; the caller orders the device work that
// used it before any reuse (the iterator does so with events).
func (p *DevicePool) Free(b *DeviceBuffer) {
	if b == nil || b.ptr == 0 {
		return
	}
	p.e.acct.Free(uint64(b.class))
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.cached[b.class] = append(p.cached[b.class], b.ptr)
	}
	p.mu.Unlock()
	if closed {
		if err := p.e.ctx.MemFree(b.ptr); err == nil {
			p.e.acct.Unreserve(uint64(b.class))
		}
	}
	b.ptr = 0
}

// Trim gives every cached block back to the driver and returns the bytes released.
func (p *DevicePool) Trim() (uint64, error) {
	p.mu.Lock()
	cached := p.cached
	p.cached = map[int][]DevicePtr{}
	p.mu.Unlock()
	var released uint64
	var errs []error
	for class, blocks := range cached {
		for _, ptr := range blocks {
			if err := p.e.ctx.MemFree(ptr); err != nil {
				errs = append(errs, err)
				continue
			}
			p.e.acct.Unreserve(uint64(class))
			released += uint64(class)
		}
	}
	return released, errors.Join(errs...)
}

func (p *DevicePool) close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_, err := p.Trim()
	return err
}
