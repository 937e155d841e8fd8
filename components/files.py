"""Files on disk: the CRC-32 of a file, and a failed filesystem operation in one line (the path, what its
errno means, whether space ran out).

A save that runs out of space does not always say so: torch's zip serializer reports a short write as
``unexpected pos 704 vs 598`` (no errno), on a full disk and under a file-size limit alike. So besides
the errno of the exception (and of what it wraps), :func:`out_of_space` looks at the filesystem itself:
less than ``LOW_SPACE_BYTES`` free under the path, or a file under it that reached this process's file-size
limit (``RLIMIT_FSIZE``, ``ulimit -f``).
"""

from __future__ import annotations

import errno
import os
import resource
import zlib
from pathlib import Path

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota exceeded, file-size limit
LOW_SPACE_BYTES = 1 << 20  # less free than this under a path whose write failed: the disk is full
# What to do about the errnos a run directory meets most often.
FIXES = {
    errno.EACCES: "choose a writable --job.output_dir or fix its permissions",
    errno.EPERM: "choose a writable --job.output_dir or fix its permissions",
    errno.EROFS: "the filesystem is mounted read-only: choose another --job.output_dir",
    errno.ENOTDIR: "a part of that path is a file, not a directory: choose another --job.output_dir",
    errno.EISDIR: "remove or rename that directory",
}


def file_crc32(path: Path, chunk_bytes: int = 16 << 20) -> str:
    """CRC-32 of a file as 8 hex digits (zlib: ~2.5 GB/s on one core; catches silent corruption, not tampering)."""
    crc = 0
    with Path(path).open("rb") as f:
        while block := f.read(chunk_bytes):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def errno_chain(err: BaseException | None) -> list[int]:
    """The errnos of ``err``, its causes and contexts, and the per-rank failures DCP wraps (first found first)."""
    found, seen, stack = [], set(), [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            found.append(current.errno)
        failures = getattr(current, "failures", None)  # torch.distributed.checkpoint's CheckpointException
        inner = [f[0] if isinstance(f, tuple) else f for f in failures.values()] if isinstance(failures, dict) else []
        stack += [current.__cause__, current.__context__, *[e for e in inner if isinstance(e, BaseException)]]
    return found


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged write may still use on the filesystem of ``path`` (its nearest existing ancestor)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            stat = os.statvfs(candidate)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize
    return None


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (RLIMIT_FSIZE's soft value), None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _at_size_limit(path: Path, limit: int) -> Path | None:
    path = Path(path)
    files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    return next((file for file in files if file.stat().st_size >= limit), None)


def out_of_space(err: BaseException | None, path: Path) -> str | None:
    """Why a write under ``path`` failed for lack of space, e.g. ``the disk is full (12 KiB free)``; None if not."""
    codes = errno_chain(err)
    limit = file_size_limit()
    if limit is not None and (errno.EFBIG in codes or _at_size_limit(path, limit)):
        return f"a file reached this process's file-size limit of {limit:,} bytes (ulimit -f)"
    free = free_bytes(path)
    if errno.ENOSPC in codes or (free is not None and free < LOW_SPACE_BYTES):
        return f"the disk is full ({free:,} bytes free)" if free is not None else "the disk is full"
    if errno.EDQUOT in codes:
        return "the disk quota is exhausted"
    if errno.EFBIG in codes:
        return "a file grew past the filesystem's largest file size"
    if err is not None and any(os.strerror(code) in str(err) for code in OUT_OF_SPACE):
        return "the disk is full or a quota / file-size limit was reached"
    return None


def no_space_line(path: Path, reason: str) -> str:
    return f"no space left on {path}: {reason}; free space there or choose another --job.output_dir"


def describe_os_error(err: OSError, path: Path | None = None) -> str:
    """One line for an OSError: ``no space left on <path>: ...`` when space ran out, else ``<path>: <strerror>
    (<ERRNO>)`` and, for the common errnos, what to do. ``path`` stands in when the error names no file."""
    where = Path(err.filename) if err.filename else path
    if where is not None and err.errno in OUT_OF_SPACE:
        return no_space_line(where, out_of_space(err, where) or os.strerror(err.errno))
    name = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    what = f"{err.strerror or err} ({name})" if name else f"{err.strerror or err}"
    fix = FIXES.get(err.errno)
    line = f"{where}: {what}" if where is not None else what
    return f"{line}; {fix}" if fix else line
