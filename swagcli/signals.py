"""How swag stops when it is told to.

* Everywhere (:func:`interrupt_on_term`, entered by the CLI): SIGTERM raises
  :class:`~swagcli.errors.Interrupted` in the main thread, as Ctrl-C raises KeyboardInterrupt, so
  clean-up runs (temporary files removed, worker pools terminated) and the CLI exits with 143.
* In a training loop (:func:`take_signals`): SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 ask for a stop at
  the next update boundary, where a checkpoint is written; a second Ctrl-C (a second after the
  first) stops at once. While the loop waits for data (:func:`waiting_for_data`), a stop that has
  not reached its boundary ``GRACE_S`` seconds after the signal raises ``Interrupted``: a stream
  that never delivers cannot hold the process.
* Child processes (:func:`dataloader_worker_init`, :func:`pool_worker_init`) die with their parent
  (``PR_SET_PDEATHSIG``), so a ``kill -9`` of swag leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time

from swagcli.errors import Interrupted

GRACE_S = 5.0
# pending: a SIGTERM raised Interrupted (interrupt_on_term) and nothing has consumed it yet: where
# Python swallowed it (an at-fork hook, a __del__), the training loop's take_signals keeps the stop
STOP: dict = {"requested": False, "signum": None, "at": 0.0, "pending": False}
_WAIT = {"data": False}
_STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return f"signal {signum}"


# -- everywhere ---------------------------------------------------------------------------------------
def _raise_on_term(signum, frame):  # noqa: ARG001
    STOP.update(requested=True, signum=signum, at=time.monotonic(), pending=True)
    raise Interrupted(f"interrupted ({name(signum)})", signum)


def clear_stop() -> None:
    """No stop requested (a command starts)."""
    STOP.update(requested=False, signum=None, at=0.0, pending=False)


def _quiet_unraisable(prev):
    """``sys.unraisablehook`` that says nothing of an :class:`Interrupted` Python could not raise
    (it landed in an at-fork hook or a ``__del__``): the stop is kept in ``STOP`` instead."""
    def hook(unraisable):
        if not isinstance(unraisable.exc_value, Interrupted):
            prev(unraisable)
    return hook


def worker_death(e: BaseException, what: str = "data loading"):
    """A DataLoader worker that died (torch raises a RuntimeError, at any point: its SIGCHLD
    handler): stopped with us by a signal sent to every process (SLURM, ``kill -TERM -PGID``), an
    :class:`Interrupted`; killed otherwise (out of memory), a one-line SwagError. Anything else
    comes back as it is."""
    from swagcli.errors import SwagError

    text = str(e).strip()
    if not isinstance(e, RuntimeError) or "DataLoader worker" not in text:
        return e
    if STOP["requested"]:
        return Interrupted(f"interrupted ({name(STOP['signum'])}; the data workers were stopped too, so the "
                           "current update could not be finished)", STOP["signum"] or signal.SIGTERM)
    return SwagError(f"{what}: {text.splitlines()[0]} (out of memory? try fewer data.workers)")


@contextlib.contextmanager
def interrupt_on_term():
    """SIGTERM -> :class:`Interrupted` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import sys

    prev = signal.signal(signal.SIGTERM, _raise_on_term)
    prev_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable(sys.unraisablehook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)
        sys.unraisablehook = prev_hook


# -- training loops -----------------------------------------------------------------------------------
def _request_stop(signum, frame):  # noqa: ARG001
    now = time.monotonic()
    if STOP["requested"] and signum == signal.SIGINT and now - STOP["at"] > 1.0:
        raise Interrupted("interrupted (SIGINT, twice): stopped without waiting for the update to end", signum)
    if not STOP["requested"]:
        STOP.update(requested=True, signum=signum, at=now)
    if _WAIT["data"]:
        _arm()


def request_stop(signum: int = signal.SIGUSR1) -> None:
    """What a stop signal does in a training loop (a test seam)."""
    if not STOP["requested"]:
        STOP.update(requested=True, signum=signum, at=time.monotonic())


def take_signals() -> dict:
    """Stop signals ask for a stop at the next update boundary (an earlier request is cleared, but
    a SIGTERM whose Interrupted Python swallowed: that stop stands); returns the previous handlers
    for :func:`restore_signals`."""
    prev = {}
    if threading.current_thread() is threading.main_thread():
        prev = {s: signal.signal(s, _request_stop) for s in _STOP_SIGNALS}
    if not STOP.get("pending"):
        clear_stop()
    return prev


def restore_signals(prev: dict) -> None:
    _disarm()
    for s, h in prev.items():
        signal.signal(s, h)


def _alarm(signum, frame):  # noqa: ARG001
    if _WAIT["data"] and STOP["requested"]:
        raise Interrupted(f"interrupted ({name(STOP['signum'])}) while waiting for data "
                          f"(none came within {GRACE_S:g} s)", STOP["signum"] or signal.SIGTERM)


def _arm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, GRACE_S)


def _disarm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def waiting_for_data():
    """Around a blocking wait for the next batch: a requested stop may end it after ``GRACE_S``."""
    _WAIT["data"] = True
    if STOP["requested"]:
        _arm()
    try:
        yield
    finally:
        _WAIT["data"] = False
        _disarm()


def check_stop(where: str) -> None:
    """Raise :class:`Interrupted` if a stop was requested (loops with no update boundary to reach:
    evaluation, feature extraction)."""
    if STOP["requested"]:
        raise Interrupted(f"interrupted ({name(STOP['signum'])}) during {where}", STOP["signum"] or signal.SIGTERM)


# -- child processes ----------------------------------------------------------------------------------
def _die_with_parent(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers notice the parent's death more slowly
        pass


def dataloader_worker_init(worker_id: int = 0) -> None:  # noqa: ARG001
    """DataLoader workers: killed when their process dies. Stop signals are the parent's business
    (SLURM and ``kill -TERM -PGID`` signal every process of a job): the parent finishes its update
    with the workers' data and checkpoints. So SIGINT, SIGUSR1/2 are ignored, and SIGTERM ends a
    worker only once the loader is shutting down (its ``done_event`` is set: the loader terminates
    a worker that does not stop by itself), where that event can be found; else it ends it."""
    import sys

    _die_with_parent(signal.SIGKILL)
    for s in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)
    done = sys._getframe(1).f_locals.get("done_event")  # torch's _worker_loop calls init_fn(worker_id)
    if done is None or not hasattr(done, "is_set") or not os.environ.get(_KEEP_TERM):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:
        def on_term(signum, frame):  # noqa: ARG001
            if done.is_set():
                os._exit(1)

        signal.signal(signal.SIGTERM, on_term)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


_KEEP_TERM = "SWAG_WORKERS_OUTLAST_SIGTERM"


@contextlib.contextmanager
def workers_outlast_sigterm():
    """DataLoader workers started in this block (a training loop's) survive a SIGTERM sent to every
    process, so the loop can finish its update and checkpoint; the loop must shut its loader down
    itself when it ends (:func:`shutdown_loader`). Other loaders' workers die of SIGTERM."""
    os.environ[_KEEP_TERM] = "1"
    try:
        yield
    finally:
        os.environ.pop(_KEEP_TERM, None)


def shutdown_loader(it) -> None:
    """Stop a DataLoader iterator's workers now (not at interpreter exit, where a worker waiting
    for work and the exiting parent would wait for each other)."""
    stop = getattr(it, "_shutdown_workers", None)
    if stop is None:
        return
    try:
        stop()
    except Exception:  # noqa: BLE001 - a worker already gone
        pass
    for w in getattr(it, "_workers", []):  # one that could not even run its SIGTERM handler
        try:
            w.join(timeout=2)
            if w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
                w.join(timeout=2)
        except (OSError, ValueError, AssertionError):
            pass


def pool_worker_init() -> None:
    """Worker pools of data preparation: killed with their parent; SIGTERM (a pool's terminate)
    ends them at once, whatever they are doing (a Python handler would wait for the interpreter,
    and a worker stuck in a lock would then never end: the pool's join with it); Ctrl-C is the
    parent's to handle. The files a killed worker was writing are temporary names, which the
    stage removes (:func:`swagcli.fileio.clean_stale_temps`)."""
    _die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() == 1:
        os._exit(1)


def rank_process_init() -> None:
    """A local training process (one of N): told to stop (SIGTERM: checkpoint, then exit) when the
    launching process dies."""
    _die_with_parent(signal.SIGTERM)
