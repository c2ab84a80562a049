"""What this process has loaded: which object provides a symbol, and calls into an OpenBLAS.

``_handles`` keeps every library the package loads referenced for the process lifetime; the
OpenBLAS itself is loaded last (after its runtime dependencies), so it is ``_handles[-1]``.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_handles: list[ctypes.CDLL] = []  # keep what we loaded referenced for the process lifetime


def _mapped_path(fragment: str) -> str | None:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                if fragment in line:
                    return line.split(None, 5)[-1].strip()
    except OSError:
        pass
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _symbol_owner(symbol: str) -> str | None:
    """File of the object that provides ``symbol`` in the global scope, if any."""
    try:
        addr = ctypes.cast(getattr(ctypes.CDLL(None), symbol), ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None
    for lib in (None, "libdl.so.2"):
        try:
            dladdr = ctypes.CDLL(lib).dladdr
        except (AttributeError, OSError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        dladdr.restype = ctypes.c_int
        out = _DlInfo()
        if dladdr(addr, ctypes.byref(out)) and out.dli_fname:
            return os.fsdecode(out.dli_fname)
    return None


def _openblas_call(handle: ctypes.CDLL, name: str, restype: type) -> Any:
    """``handle.name()`` (no arguments) returning ``restype``; None where it lacks ``name``."""
    try:
        fn = getattr(handle, name)
    except AttributeError:
        return None
    fn.restype = restype
    fn.argtypes = []
    return fn()


def _openblas_call_int(handle: ctypes.CDLL, name: str) -> int | None:
    value = _openblas_call(handle, name, ctypes.c_int)
    return None if value is None else int(value)


def _openblas_call_str(handle: ctypes.CDLL, name: str) -> str | None:
    value = _openblas_call(handle, name, ctypes.c_char_p)
    return value.decode("ascii", "replace") if value else None


def _openblas_threads_of(path: str) -> int | None:
    try:
        return _openblas_call_int(ctypes.CDLL(path, mode=os.RTLD_NOLOAD),
                                  "openblas_get_num_threads")
    except OSError:
        return None
