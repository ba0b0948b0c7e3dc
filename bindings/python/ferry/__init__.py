"""ferry: GPU data staging, memory checks and metrics for training programs.

This package wraps libferry, a C-ABI shared library, through ctypes. The library is found on first use:
``FERRY_LIBRARY`` (a file path), then the copy bundled in the package, then an in-tree
``build/lib/libferry.so``, then the system's library path. Nothing needs a GPU to import or to use the
CPU engine (``Engine(device=ferry.CPU)``).

Every function and method may be called from any thread. Failures raise :class:`FerryError`
subclasses, one per library status.
"""

from . import _errors, _sources
from ._advisor import AdvisorFit, BatchSizeAdvisor, torch_min_reduce
from ._autobatch import AutoBatch
from ._dataloader import DatasetLoader, Loader, OptimizedDataLoader, PrefetchLoader
from ._device import DeviceInfo, SystemInfo, device_count, device_info, devices, system_info, version
from ._dlpack import DLPackField
from ._engine import CPU, Engine, MemorySnapshot, Pressure
from ._errors import (
    ClosedError,
    CudaError,
    FerryError,
    FerryIOError,
    FerryTimeoutError,
    FormatError,
    InternalError,
    InvalidArgumentError,
    InvalidHandleError,
    LimitError,
    NoDeviceError,
    NvmlError,
    OutOfMemoryError,
    Status,
    UnsupportedError,
    status_name,
)
from ._feed import Feed, FeedLoader
from ._images import CenterCrop, DecodeImage, ImageFolderSource, RandomResizedCrop, WebDatasetSource
from ._iterator import Batch, Iterator
from ._lib import LibraryNotFoundError, library_path
from ._megatron import BlendSource, GPTSource, MegatronSource, megatron_blend, megatron_blend_sizes
from ._memory import MemoryManager, OptimizeResult
from ._monitor import PerformanceMonitor
from ._sources import (
    ArraySource,
    CallbackSource,
    CIFAR10Source,
    FieldSpec,
    NpySource,
    RaggedTokenSource,
    RecordSource,
    Source,
    TokenSource,
)
from ._transforms import Normalize, PadSequences, ShiftTokens, Transform

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "version",
    "library_path",
    "LibraryNotFoundError",
    # devices
    "CPU",
    "device_count",
    "device_info",
    "devices",
    "system_info",
    "DeviceInfo",
    "SystemInfo",
    # engine and memory
    "Engine",
    "MemorySnapshot",
    "Pressure",
    "MemoryManager",
    "OptimizeResult",
    # batch-size advice
    "BatchSizeAdvisor",
    "AdvisorFit",
    "torch_min_reduce",
    "AutoBatch",
    # iterator, batches, loaders
    "Iterator",
    "Batch",
    "DLPackField",
    "Loader",
    "OptimizedDataLoader",
    "PrefetchLoader",
    "DatasetLoader",
    "Feed",
    "FeedLoader",
    # layout transforms
    "Transform",
    "Normalize",
    "ShiftTokens",
    "PadSequences",
    # images as they are stored
    "ImageFolderSource",
    "WebDatasetSource",
    "RandomResizedCrop",
    "CenterCrop",
    "DecodeImage",
    # Megatron corpora
    "MegatronSource",
    "GPTSource",
    "BlendSource",
    "megatron_blend",
    "megatron_blend_sizes",
    # metrics
    "PerformanceMonitor",
] + _sources.__all__ + _errors.__all__
