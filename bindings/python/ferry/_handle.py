"""The lifetime of a library handle, shared by every class that owns one."""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Any, Callable, Deque, List, Optional, Tuple

from . import _lib
from ._errors import _check, _closed

# --- callbacks, and destroys that must not run inside one ------------------------------------------------

_thread = threading.local()


class _InCallback:
    """``with _InCallback(owner):`` marks the calling thread, for the block, as running a callback that
    ferry called (a CallbackSource function on a loader's worker, a pressure callback): a ferry object
    destroyed there (by the garbage collector, which may run on any thread) must not wait for the thread
    it runs on."""

    __slots__ = ("owner",)

    def __init__(self, owner: object) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        stack: Optional[List[object]] = getattr(_thread, "callbacks", None)
        if stack is None:
            stack = _thread.callbacks = []
        stack.append(self.owner)

    def __exit__(self, *exc: object) -> None:
        _thread.callbacks.pop()


def _in_callback(owner: object = None) -> bool:
    """True when the calling thread runs a ferry callback (of ``owner``, when given)."""
    stack = getattr(_thread, "callbacks", None)
    if not stack:
        return False
    return owner is None or any(o is owner for o in stack)


_deferred_lock = threading.Lock()
_deferred: Deque[Tuple[Callable[..., Optional[int]], Tuple[Any, ...]]] = collections.deque()
_deferred_thread: Optional[threading.Thread] = None


def _run_deferred() -> None:
    global _deferred_thread
    while True:
        with _deferred_lock:
            if not _deferred:
                _deferred_thread = None
                return
            destroy, args = _deferred.popleft()
        try:
            destroy(*args)
        except Exception:  # noqa: BLE001 - a finalizer's failure has no caller to go to
            pass
        del destroy, args  # what the handle kept alive (a source's callback) goes only after the destroy


def _destroy_or_defer(destroy: Callable[..., Optional[int]], *args: Any) -> Optional[int]:
    """Runs destroy(*args), or, on a thread that runs a ferry callback, hands it to a thread of its own
    and returns None: a destroy there could wait for the very callback that runs it (a loader finalized by
    the garbage collector on one of its own workers). The deferred destroys run in order, and the thread
    is not a daemon, so that interpreter exit waits for them (they finish once the callbacks return)."""
    if _lib.forked():
        return None  # a forked child: the handle belongs to the parent's runtime, which is gone here
    if not _in_callback():
        return destroy(*args)
    global _deferred_thread
    with _deferred_lock:
        _deferred.append((destroy, args))
        if _deferred_thread is None:
            t = threading.Thread(target=_run_deferred, name="ferry-deferred-destroy", daemon=False)
            try:
                t.start()
            except RuntimeError:  # interpreter shutdown: leave the handle to the process's end
                _deferred.clear()
                return None
            _deferred_thread = t
    return None


class _Owner:
    """Owns one library handle: :meth:`close` destroys it once (idempotent, thread-safe), leaving a
    ``with`` block closes it, and garbage collection or interpreter exit destroy it as a backstop."""

    _handle: Optional[Any] = None

    def _own(self, handle: Any, destroy: Callable[..., Optional[int]], *args: Any) -> None:
        """Takes ownership of handle; destroy(*args) runs exactly once."""
        self._handle = handle
        self._finalizer = weakref.finalize(self, _destroy_or_defer, destroy, *args)

    def _h(self) -> Any:
        """The live handle; ClosedError once closed."""
        h = self._handle
        if h is None:
            raise _closed(type(self).__name__)
        return h

    def close(self) -> None:
        """Destroys the handle. Idempotent, and safe when several threads close at once."""
        self._handle = None
        finalizer = getattr(self, "_finalizer", None)
        # weakref.finalize runs its callback at most once.
        if finalizer is not None and finalizer.alive:
            status = finalizer()
            if status is not None:
                _check(status)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._handle is None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
