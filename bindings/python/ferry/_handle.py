"""The lifetime of a library handle, shared by every class that owns one."""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

from ._errors import _check, _closed


class _Owner:
    """Owns one library handle: :meth:`close` destroys it once (idempotent, thread-safe), leaving a
    ``with`` block closes it, and garbage collection or interpreter exit destroy it as a backstop."""

    _handle: Optional[Any] = None

    def _own(self, handle: Any, destroy: Callable[..., Optional[int]], *args: Any) -> None:
        """Takes ownership of handle; destroy(*args) runs exactly once."""
        self._handle = handle
        self._finalizer = weakref.finalize(self, destroy, *args)

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
