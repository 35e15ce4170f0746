"""``pdestream client-config``: compiler flags for the C and Fortran clients, like pkg-config.

The sources ship with the package (``streaming/clib``: ``pdestream_client.h``, ``pdestream_client.c``,
``pdestream_client.f90``). On first use they are compiled with the system compilers (``$CC``, default
``cc``; ``$FC``, default ``gfortran``) into static libraries in a per-user cache folder,
``$PDESTREAM_CACHE`` or else ``${XDG_CACHE_HOME:-~/.cache}/pdestream/clib/<hash of the sources>`` (so two
installed versions of pdestream never share a library), and rebuilt whenever a source is newer than its library:

- ``libpdestream_client.a``: the C client;
- ``libpdestream_fortran.a`` and ``pdestream_client.mod``: the Fortran module over it.

Usage::

    cc solver.c $(pdestream client-config --cflags --libs)
    gfortran solver.f90 $(pdestream client-config --fflags --libs)
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

CLIB = Path(__file__).resolve().parent / "clib"
C_SOURCES = ("pdestream_client.c", "pdestream_client.h")
F_SOURCE = "pdestream_client.f90"


class ClientConfigError(ValueError):
    """The client libraries cannot be built (no compiler, a compile error); the message names the fix."""


def cache_dir() -> Path:
    """Where the libraries are built: ``$PDESTREAM_CACHE``, else a folder per version of the sources under
    ``${XDG_CACHE_HOME:-~/.cache}/pdestream/clib``."""
    if os.environ.get("PDESTREAM_CACHE"):
        return Path(os.environ["PDESTREAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pdestream" / "clib" / sources_tag()


def sources_tag() -> str:
    """The first 16 hex digits of the SHA-256 of the client sources (C header and source, Fortran module)."""
    digest = hashlib.sha256()
    for name in (*C_SOURCES, F_SOURCE):
        digest.update((CLIB / name).read_bytes())
    return digest.hexdigest()[:16]


def _compiler(var: str, default: str, what: str, install: str) -> list[str]:
    cmd = shlex.split(os.environ.get(var) or default)
    if not cmd or shutil.which(cmd[0]) is None:
        raise ClientConfigError(f"no {what} {cmd[0] if cmd else default!r} on PATH; install one ({install}) or set "
                                f"{var} to its command")
    return cmd


def _stale(product: Path, sources: list[Path]) -> bool:
    return not product.exists() or product.stat().st_mtime < max(s.stat().st_mtime for s in sources)


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise ClientConfigError(f"building the pdestream client failed: `{shlex.join(cmd)}` exited with "
                                f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()[-1500:]}")


def build_c(cache: Path | None = None) -> Path:
    """Compile the C client into ``cache/libpdestream_client.a`` unless it is up to date; returns the folder."""
    cache = cache_dir() if cache is None else cache
    lib = cache / "libpdestream_client.a"
    if not _stale(lib, [CLIB / s for s in C_SOURCES]):
        return cache
    cc = _compiler("CC", "cc", "C compiler", "e.g. apt-get install gcc")
    ar = _compiler("AR", "ar", "archiver", "binutils")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # concurrent builds each replace the library whole
        work = Path(tmp)
        _run([*cc, "-std=c11", "-O2", "-fPIC", "-c", str(CLIB / "pdestream_client.c"), "-o", "pdestream_client.o"],
             work)
        _run([*ar, "rcs", "libpdestream_client.a", "pdestream_client.o"], work)
        os.replace(work / "libpdestream_client.a", lib)
    return cache


def build_fortran(cache: Path | None = None) -> Path:
    """Compile the Fortran module into ``cache`` (``pdestream_client.mod``, ``libpdestream_fortran.a``)."""
    cache = build_c(cache)
    lib = cache / "libpdestream_fortran.a"
    if not _stale(lib, [CLIB / F_SOURCE]) and (cache / "pdestream_client.mod").exists():
        return cache
    fc = _compiler("FC", "gfortran", "Fortran compiler", "e.g. apt-get install gfortran")
    ar = _compiler("AR", "ar", "archiver", "binutils")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        _run([*fc, "-O2", "-fPIC", "-c", str(CLIB / F_SOURCE), "-o", "pdestream_client_f.o"], work)
        _run([*ar, "rcs", "libpdestream_fortran.a", "pdestream_client_f.o"], work)
        os.replace(work / "pdestream_client.mod", cache / "pdestream_client.mod")
        os.replace(work / "libpdestream_fortran.a", lib)
    return cache


def flags(cflags: bool = False, libs: bool = False, fflags: bool = False) -> str:
    """The flags asked for, in pkg-config order (include paths, then libraries); builds what they name."""
    if not (cflags or libs or fflags):
        raise ClientConfigError("pass --cflags, --fflags and/or --libs, e.g. `cc solver.c $(pdestream client-config "
                                "--cflags --libs)`")
    out = []
    if cflags:
        out.append(f"-I{CLIB}")
    cache = build_fortran() if fflags else (build_c() if libs else None)
    if fflags:
        out.append(f"-I{cache}")
    if libs:
        out += [f"-L{cache}", *(["-lpdestream_fortran"] if fflags else []), "-lpdestream_client"]
    return " ".join(shlex.quote(o) for o in out)
