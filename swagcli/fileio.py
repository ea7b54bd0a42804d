"""Every file swag writes goes through here.

* :func:`atomic_file` (and :func:`atomic_write_bytes` / ``_text`` / ``_json``, :func:`savefig`):
  written into a hidden temporary file beside the target, flushed to disk, then renamed over it, so
  a reader (or a crash, or a full disk) never leaves half a file under the real name; the
  temporary file is removed whatever goes wrong.
* :func:`atomic_dir`: the same for a directory (a checkpoint), renamed into place when complete.
* :func:`os_error`: an ``OSError`` as the one-line :class:`~swagcli.errors.SwagError` a user can act
  on (disk full, permission denied, read-only, a path through a file), naming the file.
* :func:`out_dir`: an output directory, created, or a one-line error when the path is a file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from swagcli.errors import SwagError

_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def os_error(e: OSError, path: str | os.PathLike | None = None, doing: str = "write") -> SwagError:
    """One line for an OS error: what happened to which file, and what was kept."""
    where = str(path or e.filename or "?")
    code = e.errno
    if code in _NO_SPACE:
        why = "disk full (no space left on device)" if code == errno.ENOSPC else "disk quota exceeded"
        return SwagError(f"{where}: {why} while writing; the partial file was removed and earlier "
                         "outputs are intact: free space and rerun")
    if code in (errno.EACCES, errno.EPERM):
        return SwagError(f"{where}: permission denied (cannot {doing} here)")
    if code == errno.EROFS:
        return SwagError(f"{where}: read-only file system (cannot {doing} here)")
    if code == errno.ENOTDIR:
        return SwagError(f"{where}: a part of this path is a file, not a directory")
    if code == errno.EISDIR:
        return SwagError(f"{where}: is a directory, not a file")
    if code == errno.ENAMETOOLONG:
        return SwagError(f"{where}: file name too long")
    if code == errno.ENOENT:
        return SwagError(f"{where}: no such file or directory")
    return SwagError(f"{where}: cannot {doing} ({e.strerror or e})")


def write_error(e: BaseException, path) -> SwagError | None:
    """:func:`os_error` for an OS error, also one that a library wrapped in its own exception type
    (safetensors reports ``... (os error 28)``); None for anything else."""
    if isinstance(e, OSError) and e.errno is not None:
        return os_error(e, path)
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m:
        code = int(m.group(1))
        return os_error(OSError(code, os.strerror(code)), path)
    return None


def _tmp_name(path: Path, suffix: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", fsync: bool = True, **open_kw):
    """``with atomic_file(p, "w") as f: f.write(...)``: ``p`` appears, complete, only when the block
    ends without an error; on any error the temporary file is removed and ``p`` is untouched."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise os_error(e, path) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    with atomic_file(path, "wb", fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    with atomic_file(path, "w", fsync=fsync, encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1, **kw) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, **kw) + "\n")


def savefig(fig, path: str | os.PathLike, **kw) -> Path:
    """A matplotlib figure saved atomically (format from the suffix)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kw)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """``with atomic_dir(final) as tmp: <write files into tmp>``: ``final`` is replaced by ``tmp``
    when the block ends without an error; on error ``tmp`` is removed and ``final`` untouched."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        yield tmp
        for f in tmp.iterdir():  # the files' data on disk before the rename publishes them
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            old = _tmp_name(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        _remove(tmp)
        raise os_error(e, getattr(e, "filename", None) or final) from None
    except BaseException:
        _remove(tmp)
        raise


def out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """An output directory: created (with its parents) if needed; a file there is a one-line error."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SwagError(f"{what} {p}: is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SwagError(f"{what} {p}: is a file, not a directory") from None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise SwagError(f"{what} {p}: a part of this path is a file, not a directory") from None
        raise os_error(e, p, "create a directory") from None
    return p


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Remove the temporary files and directories an interrupted (killed) writer left in ``folder``
    (and its subfolders with ``recursive``); returns how many. Only names this module makes
    (``.NAME.<pid>-<id>.tmp`` / ``.partial-``) whose process is gone."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in (folder.rglob(".*") if recursive else folder.iterdir()):
        name = p.name
        if name.startswith(".") and (name.endswith((".tmp", ".old")) or ".partial-" in name):
            pid = name.rsplit(".", 2)[-2].split("-")[0] if name.endswith((".tmp", ".old")) else \
                name.rsplit(".partial-", 1)[-1].split("-")[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            _remove(p)
            n += 1
    return n


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def scratch_dir(folder: str | os.PathLike, name: str = "spill"):
    """A temporary folder in ``folder`` (:func:`temp_dir_in`) for the length of a ``with``, removed
    after whatever happens; where the body fails and this made ``folder``, ``folder`` goes too if
    nothing else is in it (an error before anything was written leaves no folder)."""
    folder = Path(folder)
    made = not folder.exists()
    d = temp_dir_in(folder, name)
    try:
        yield d
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    finally:
        shutil.rmtree(d, ignore_errors=True)


def temp_dir_in(folder: str | os.PathLike, name: str = "spill") -> Path:
    """A new temporary folder ``.NAME.partial-<pid>-<id>`` in ``folder`` (made, with its parents),
    after removing those a killed run left there (:func:`clean_stale_temps`)."""
    import secrets

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(folder)
    d = folder / f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    return d
