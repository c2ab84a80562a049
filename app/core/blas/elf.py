"""Read an ELF shared object's dynamic section, and rewrite its SONAME, in pure Python.

What the package needs to know about a library file without loading it: its machine,
``DT_NEEDED`` entries, SONAME (and where that string sits in the file), run paths and symbol
versions (:func:`_read_elf`); and a copy of its bytes with a shorter SONAME written over the
old one (:func:`_patched_bytes`, for the renamed libgfortran copies of ``runtime_deps``).
Standard library only.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

_DT_NEEDED, _DT_STRTAB, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 14, 15, 29
_DT_VERDEF, _DT_VERDEFNUM = 0x6FFFFFFC, 0x6FFFFFFD
_DT_VERNEED, _DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF
_PT_LOAD, _PT_DYNAMIC, _SHT_DYNSYM = 1, 2, 11


@dataclass
class _Elf:
    machine: int
    needed: list[str]
    soname: str | None
    soname_offset: int | None  # file offset of the SONAME string
    rpath: list[str]  # DT_RPATH + DT_RUNPATH entries
    verdefs: set[str]  # versions this object defines
    verneeds: dict[str, set[str]]  # needed file -> versions required from it
    string_refs: set[int]  # file offsets of dynstr strings referenced (excl. SONAME)


def _safe_read_elf(path: str) -> _Elf | None:
    try:
        return _read_elf(path)
    except (OSError, ValueError, struct.error, IndexError):
        return None


def _read_elf(path: str) -> _Elf:
    """Parse the dynamic section of an ELF shared object (32/64-bit, either endian)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return _parse_elf(m)


def _parse_elf(d: mmap.mmap | bytes) -> _Elf:
    if d[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64 = d[4] == 2
    e = "<" if d[5] == 1 else ">"
    machine = struct.unpack_from(e + "H", d, 18)[0]
    if is64:
        phoff, shoff = struct.unpack_from(e + "QQ", d, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", d, 54)
    else:
        phoff, shoff = struct.unpack_from(e + "II", d, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", d, 42)

    loads: list[tuple[int, int, int]] = []
    dyn: tuple[int, int] | None = None
    for i in range(phnum):
        o = phoff + i * phentsize
        if is64:
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(e + "IIQQQQ", d, o)
        else:
            p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(e + "IIIII", d, o)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dyn = (p_offset, p_filesz)
    if dyn is None:
        raise ValueError("no dynamic section")

    def file_off(vaddr: int) -> int:
        for va, off, size in loads:
            if va <= vaddr < va + size:
                return vaddr - va + off
        raise ValueError(f"address {vaddr:#x} not in a loaded segment")

    tags: list[tuple[int, int]] = []
    fmt, step = (e + "qQ", 16) if is64 else (e + "iI", 8)
    for o in range(dyn[0], dyn[0] + dyn[1], step):
        tag, val = struct.unpack_from(fmt, d, o)
        if tag == 0:
            break
        tags.append((tag, val))
    first = {t: v for t, v in reversed(tags)}
    if _DT_STRTAB not in first:
        raise ValueError("no DT_STRTAB")
    strtab = file_off(first[_DT_STRTAB])

    def string(off: int) -> str:
        end = d.find(b"\0", strtab + off)
        return bytes(d[strtab + off:end]).decode("utf-8", "replace")

    refs: set[int] = set()
    needed, rpath = [], []
    soname = soname_off = None
    for tag, val in tags:
        if tag == _DT_NEEDED:
            needed.append(string(val))
            refs.add(strtab + val)
        elif tag in (_DT_RPATH, _DT_RUNPATH):
            rpath += [p for p in string(val).split(":") if p]
            refs.add(strtab + val)
        elif tag == _DT_SONAME:
            soname, soname_off = string(val), strtab + val

    verdefs: set[str] = set()
    if _DT_VERDEF in first:
        o = file_off(first[_DT_VERDEF])
        for _ in range(first.get(_DT_VERDEFNUM, 0)):
            _, _, _, cnt, _, aux, nxt = struct.unpack_from(e + "HHHHIII", d, o)
            a = o + aux
            for j in range(cnt):
                name, anext = struct.unpack_from(e + "II", d, a)
                refs.add(strtab + name)
                if j == 0:
                    verdefs.add(string(name))
                a += anext
            if not nxt:
                break
            o += nxt
    verneeds: dict[str, set[str]] = {}
    if _DT_VERNEED in first:
        o = file_off(first[_DT_VERNEED])
        for _ in range(first.get(_DT_VERNEEDNUM, 0)):
            _, cnt, fname, aux, nxt = struct.unpack_from(e + "HHIII", d, o)
            refs.add(strtab + fname)
            versions = verneeds.setdefault(string(fname), set())
            a = o + aux
            for _ in range(cnt):
                _, _, _, name, anext = struct.unpack_from(e + "IHHII", d, a)
                refs.add(strtab + name)
                versions.add(string(name))
                if not anext:
                    break
                a += anext
            if not nxt:
                break
            o += nxt

    # Symbol names live in the same string table: collect them via the section headers.
    shfmt = e + ("IIQQQQII" if is64 else "IIIIIIII")
    for i in range(shnum if shoff else 0):
        sh = struct.unpack_from(shfmt, d, shoff + i * shentsize)
        sh_type, sh_offset, sh_size, sh_link = sh[1], sh[4], sh[5], sh[6]
        if sh_type != _SHT_DYNSYM or sh_link >= shnum:
            continue
        link = struct.unpack_from(shfmt, d, shoff + sh_link * shentsize)
        if link[4] != strtab:
            continue
        entsize = 24 if is64 else 16
        for s in range(sh_offset, sh_offset + sh_size, entsize):
            refs.add(strtab + struct.unpack_from(e + "I", d, s)[0])
    if soname_off is not None:
        refs.discard(soname_off)
    return _Elf(machine, needed, soname, soname_off, rpath, verdefs, verneeds, refs)


def _expand_rpath(rpath: list[str], obj: str) -> list[str]:
    origin = os.path.dirname(os.path.realpath(obj))
    return [
        os.path.normpath(p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
        for p in rpath
    ]


def _patched_bytes(src: str, info: _Elf, soname: str) -> bytes:
    """``src``'s bytes with its DT_SONAME string overwritten by ``soname``."""
    if info.soname is None or info.soname_offset is None:
        raise ValueError(f"{src} has no SONAME")
    old, new = info.soname.encode(), soname.encode()
    if len(new) > len(old):
        raise ValueError(f"SONAME {soname!r} longer than {info.soname!r}")
    start, end = info.soname_offset, info.soname_offset + len(old)
    clash = [o for o in info.string_refs if start < o <= end]
    if clash:  # another string shares the tail we would rewrite
        raise ValueError(f"{src}: SONAME string is shared ({len(clash)} references)")
    with open(src, "rb") as f:
        data = bytearray(f.read())
    if bytes(data[start:end]) != old:
        raise ValueError(f"{src}: SONAME not where expected")
    data[start:end] = new + b"\0" * (len(old) - len(new))
    return bytes(data)


_own_machine: int | None = None


def _process_machine() -> int | None:
    global _own_machine
    if _own_machine is None:
        try:
            with open("/proc/self/exe", "rb") as f:
                head = f.read(20)
            if head[:4] == b"\x7fELF":
                _own_machine = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]
        except OSError:
            return None
    return _own_machine
