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

// blockCache is the part both pools share: freed blocks cached by size class, handed out again before
// the driver is asked, given back by trim, and released at once after close. Safe for concurrent use.
type blockCache[T any] struct {
	mu      sync.Mutex
	blocks  map[int][]T
	closed  bool
	release func(T, int) error // gives one block of a class back to the system
}

func newBlockCache[T any](release func(T, int) error) *blockCache[T] {
	return &blockCache[T]{blocks: map[int][]T{}, release: release}
}

// take pops a cached block of the class; ok is false when there is none. It fails after close.
func (c *blockCache[T]) take(class int) (b T, ok bool, closed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return b, false, true
	}
	if bs := c.blocks[class]; len(bs) > 0 {
		b = bs[len(bs)-1]
		c.blocks[class] = bs[:len(bs)-1]
		return b, true, false
	}
	return b, false, false
}

// put caches a freed block, or releases it when the cache is closed.
func (c *blockCache[T]) put(b T, class int) {
	c.mu.Lock()
	closed := c.closed
	if !closed {
		c.blocks[class] = append(c.blocks[class], b)
	}
	c.mu.Unlock()
	if closed {
		_ = c.release(b, class)
	}
}

// trim releases every cached block and returns the bytes released.
func (c *blockCache[T]) trim() (uint64, error) {
	c.mu.Lock()
	cached := c.blocks
	c.blocks = map[int][]T{}
	c.mu.Unlock()
	var released uint64
	var errs []error
	for class, bs := range cached {
		for _, b := range bs {
			if err := c.release(b, class); err != nil {
				errs = append(errs, err)
				continue
			}
			released += uint64(class)
		}
	}
	return released, errors.Join(errs...)
}

// close releases the cache and makes later frees release at once.
func (c *blockCache[T]) close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	_, err := c.trim()
	return err
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
	e     *Engine
	cache *blockCache[unsafe.Pointer]
}

func newHostPool(e *Engine) *HostPool {
	p := &HostPool{e: e}
	p.cache = newBlockCache(p.release)
	return p
}

// Alloc returns a buffer of n bytes (n > 0), from the cache when a block of its class is free.
func (p *HostPool) Alloc(n int) (*HostBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: host buffer of %d bytes", ErrInvalidArgument, n)
	}
	class := sizeClass(n)
	ptr, ok, closed := p.cache.take(class)
	if closed || p.e.closed.Load() { // a closed engine's pools may live on for the batches still held
		if ok {
			p.cache.put(ptr, class)
		}
		return nil, fmt.Errorf("%w: host pool of the engine on device %d", ErrClosed, p.e.device)
	}
	if !ok {
		var err error
		if ptr, err = p.allocate(class); err != nil {
			p.e.acct.Failure()
			return nil, err
		}
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
	p.cache.put(b.ptr, b.class)
	b.ptr = nil
}

// Trim gives every cached block back to the system and returns the bytes released.
func (p *HostPool) Trim() (uint64, error) { return p.cache.trim() }

func (p *HostPool) close() error { return p.cache.close() }

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
	e     *Engine
	cache *blockCache[DevicePtr]
}

func newDevicePool(e *Engine) *DevicePool {
	p := &DevicePool{e: e}
	p.cache = newBlockCache(p.release)
	return p
}

// Alloc returns n bytes of device memory (n > 0). It fails with ErrUnsupported on the CPU engine.
func (p *DevicePool) Alloc(n int) (*DeviceBuffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: device buffer of %d bytes", ErrInvalidArgument, n)
	}
	if !p.e.gpu {
		return nil, fmt.Errorf("%w: the CPU engine has no device memory", ErrUnsupported)
	}
	class := sizeClass(n)
	ptr, ok, closed := p.cache.take(class)
	if closed || p.e.closed.Load() { // a closed engine's pools may live on for the batches still held
		if ok {
			p.cache.put(ptr, class)
		}
		return nil, fmt.Errorf("%w: device pool of the engine on device %d", ErrClosed, p.e.device)
	}
	if !ok {
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

func (p *DevicePool) release(ptr DevicePtr, class int) error {
	if err := p.e.ctx.MemFree(ptr); err != nil {
		return err
	}
	p.e.acct.Unreserve(uint64(class))
	return nil
}

// Free returns b to the cache. b must not be used afterwards; the caller orders the device work that
// used it before any reuse (the iterator does so with events).
func (p *DevicePool) Free(b *DeviceBuffer) {
	if b == nil || b.ptr == 0 {
		return
	}
	p.e.acct.Free(uint64(b.class))
	p.cache.put(b.ptr, b.class)
	b.ptr = 0
}

// Trim gives every cached block back to the driver and returns the bytes released.
func (p *DevicePool) Trim() (uint64, error) { return p.cache.trim() }

func (p *DevicePool) close() error { return p.cache.close() }
