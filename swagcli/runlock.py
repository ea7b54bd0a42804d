"""One lock per output directory: two swag commands never write into the same directory at once.

``with run_lock(out, "pretrain"):`` takes an exclusive ``flock`` on ``OUT/.swag.lock`` and writes
who holds it (command, pid, host, SLURM job, start time) into it. The kernel drops the lock when
the holder dies, ``kill -9`` included, so a stale lock cannot exist; a second command is refused in
one line naming the holder. A requeued SLURM job (the same job id) waits for its previous
incarnation to let go instead of being refused. Processes started by the holder (local training
ranks) inherit it through the environment (``SWAG_HELD_LOCKS``) instead of taking it again.

Where the file system has no working ``flock`` (some network file systems), the holder file alone
decides: a holder on this host whose process is gone, or the same SLURM job, is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

from swagcli.errors import SwagError

LOCK_NAME = ".swag.lock"
_ENV = "SWAG_HELD_LOCKS"
REQUEUE_WAIT_S = 120.0


def _held_by_ancestor() -> set[str]:
    return {p for p in os.environ.get(_ENV, "").split(os.pathsep) if p}


def _job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


def _describe(h: dict) -> str:
    who = f"swag {h.get('command', '?')} (pid {h.get('pid', '?')} on {h.get('host', '?')}"
    if h.get("slurm_job"):
        who += f", SLURM job {h['slurm_job']}"
    if h.get("started"):
        who += f", since {h['started']}"
    return who + ")"


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


class _Lock:
    def __init__(self, out: Path, command: str):
        self.out, self.command = out, command
        self.path = out / LOCK_NAME
        self.fd: int | None = None
        self.flock = True

    def acquire(self) -> None:
        from swagcli.fileio import os_error, out_dir

        deadline = None
        while True:
            out_dir(self.out)
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise os_error(e, self.path, "create the lock file") from None
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.fd)
                ours = _job_id() and holder.get("slurm_job") == _job_id()  # our own requeued job
                if ours or not holder.get("pid"):  # (no pid: the holder is still writing its name)
                    deadline = deadline or time.monotonic() + (REQUEUE_WAIT_S if ours else 2.0)
                    if time.monotonic() < deadline:
                        self._close()
                        time.sleep(0.2)
                        continue
                self._close()
                raise SwagError(f"{self.out}: in use by {_describe(holder)}; wait for it to end, or "
                                "choose another output directory") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self._close()
                    raise os_error(e, self.path, "lock") from None
                self.flock = False
                self._without_flock()
                break
            try:  # the file we locked must still be the lock file (its holder may have removed it)
                same = os.fstat(self.fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._close()
        self._write_holder()

    def _without_flock(self) -> None:
        """No flock here: trust the holder file (stale when its process is gone on this host)."""
        h = _read_holder(self.fd)
        mine = h.get("host") == platform.node()
        if h.get("pid") and not (mine and not _pid_alive(h["pid"])) and h.get("pid") != os.getpid() \
                and not (_job_id() and h.get("slurm_job") == _job_id()) and not h.get("released"):
            self.release()
            raise SwagError(f"{self.out}: in use by {_describe(h)}; wait for it to end, or choose another "
                            "output directory (no file locking here: if that process is gone, delete "
                            f"{self.path})")

    def _write_holder(self) -> None:
        info = {"command": self.command, "pid": os.getpid(), "host": platform.node(),
                "slurm_job": _job_id(), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, (json.dumps(info) + "\n").encode())

    def _close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        if self.fd is None:
            return
        if not self.flock:  # the holder file is all there is: mark it free
            with contextlib.suppress(OSError):
                h = _read_holder(self.fd)
                os.pwrite(self.fd, (json.dumps({**h, "released": True}) + "\n").encode().ljust(
                    os.fstat(self.fd).st_size), 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self._close()


@contextlib.contextmanager
def run_lock(out: str | os.PathLike | None, command: str, keep_file: bool = True):
    """Hold ``out``'s lock while the block runs (no-op for ``None`` or a lock an ancestor holds);
    ``keep_file=False`` removes the lock file afterwards (a folder meant to be uploaded as it is)."""
    if out is None:
        yield
        return
    out = Path(out)
    key = str(out.resolve())
    if key in _held_by_ancestor():
        yield
        return
    created = not out.exists()
    lock = _Lock(out, command)
    lock.acquire()
    before = os.environ.get(_ENV)
    os.environ[_ENV] = os.pathsep.join(sorted(_held_by_ancestor() | {key}))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = before
        lock.release()
        if not keep_file:
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()
        if created:  # a command that failed before writing anything leaves no directory behind
            with contextlib.suppress(OSError):
                if [p.name for p in out.iterdir()] == [LOCK_NAME]:
                    (out / LOCK_NAME).unlink()
                    out.rmdir()


def probe_free(out: str | os.PathLike) -> None:
    """Refuse (one line) if another process holds ``out``'s lock; takes nothing."""
    out = Path(out)
    if not (out / LOCK_NAME).exists():
        return
    with run_lock(out, "check"):
        pass
