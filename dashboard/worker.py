"""Compute workers: uploaded models are loaded and run in separate processes, never in Streamlit's.

TensorFlow's own security guidance treats a model as a program and recommends running untrusted
ones in a sandbox, and a crash inside TensorFlow (TF 2.21 has segfaulted on CPU in this project)
kills whichever process it happens in. So the dashboard process never deserialises a model: it
sends plain requests (a :class:`~dashboard.protocol.ModelRef`, pixels, parameters) to a small pool
of worker processes and reads plain replies back with a restricted unpickler
(:func:`dashboard.protocol.loads`).

Each worker is a fresh interpreter (``python -m dashboard.worker FD``) talking over a socket pair.
Per request the parent enforces

* a time limit (``EXPLAINER_REQUEST_TIMEOUT_S``, default 300 s; ``EXPLAINER_LOAD_TIMEOUT_S``,
  default 120 s, for loading a model): past it the worker is killed;
* a memory ceiling on the worker's resident memory (``EXPLAINER_WORKER_MEMORY_MB``; default the
  smaller of 6 GiB and 80 % of this machine's memory shared between the workers), sampled every
  50 ms while the request runs: above it the worker is killed;
* crash detection: a worker that dies (segfault, abort, out-of-memory kill) is noticed at once.

Each of these costs one request, not the dashboard: the request raises a retryable
:class:`~dashboard.protocol.ServiceError` with a plain sentence, and the next request starts a
fresh worker. ``EXPLAINER_WORKERS`` (default 2) sets the pool size; each worker keeps up to
``EXPLAINER_MAX_MODELS`` (default 3) loaded models, and requests for a model prefer the worker
that already holds it.

What this does not do: the workers run as the same operating-system user as the dashboard, with
the same file-system access. The model-file checks (:mod:`explainers.io.safety`) are what keep
hostile code from running at all; the worker boundary limits the damage of what gets past them
(crashes, runaway memory or time) and keeps it out of the Streamlit process. For stronger
isolation run the dashboard in a container (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from explainers.core.specs import ProgressCallback

from .protocol import ServiceError, UnsafeReplyError, WorkerReply, dumps, loads

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.05
#: Request ids, unique in this process (across workers and restarts); 0 is the "ready" message.
_REQUEST_IDS = itertools.count(1)


def _env_number(name: str, default: float, low: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        LOGGER.warning("ignoring %s=%r: not a number", name, text)
        return default
    return max(low, value)


def _total_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


@dataclass(frozen=True)
class WorkerSettings:
    """Pool size and per-request limits (see the module docstring for the environment)."""

    workers: int = 2
    timeout_s: float = 300.0
    #: Loading a model (a file Keras or libhdf5 may spin on forever when it is damaged).
    load_timeout_s: float = 120.0
    memory_bytes: int = 6 * 2**30
    startup_timeout_s: float = 180.0
    #: How long an abandoned request may take to stop before its worker is killed and replaced.
    cancel_grace_s: float = 10.0

    @classmethod
    def from_environment(cls) -> WorkerSettings:
        workers = int(_env_number("EXPLAINER_WORKERS", 2, 1))
        default_mb = min(6 * 1024, 0.8 * _total_memory_bytes() / 2**20 / workers)
        return cls(
            workers=workers,
            timeout_s=_env_number("EXPLAINER_REQUEST_TIMEOUT_S", 300.0, 1.0),
            load_timeout_s=_env_number("EXPLAINER_LOAD_TIMEOUT_S", 120.0, 1.0),
            memory_bytes=int(_env_number("EXPLAINER_WORKER_MEMORY_MB", default_mb, 256) * 2**20),
            startup_timeout_s=_env_number("EXPLAINER_WORKER_STARTUP_S", 180.0, 10.0),
            cancel_grace_s=_env_number("EXPLAINER_CANCEL_GRACE_S", 10.0, 0.5),
        )


def _signal_name(returncode: int | None) -> str:
    if returncode is None:
        return "an unknown cause"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Worker:
    """One worker process and the parent's end of its socket. Used by one request at a time."""

    def __init__(self, index: int, settings: WorkerSettings) -> None:
        self.index = index
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.connection: Connection | None = None
        self.loaded: set[Hashable] = set()
        self.starts = 0
        self.peak_rss = 0
        #: The id of the request this worker is computing, while one is in flight.
        self.pending: int | None = None
        #: Requests abandoned by their caller (progress callback raised, Streamlit stopped the run).
        self.abandoned = 0

    # -- life cycle ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.stop()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dashboard.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                cwd=str(ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.connection = Connection(ours.detach())
        self.loaded = set()
        self.starts += 1
        deadline = time.monotonic() + self.settings.startup_timeout_s
        reply = self._next_reply(deadline, action="start a compute worker", request_id=0)
        if reply.kind != "ready":
            self.stop()
            raise ServiceError("The compute worker did not start properly. Try again.")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                LOGGER.error("worker %d did not exit after SIGKILL", self.index)
        if self.connection is not None:
            self.connection.close()
        self.process = None
        self.connection = None
        self.loaded = set()
        self.pending = None

    # -- one request -----------------------------------------------------------------------------
    def request(
        self,
        job: str,
        kwargs: dict[str, Any],
        *,
        action: str,
        progress: ProgressCallback | None,
        timeout_s: float | None,
    ) -> Any:
        """Send one job and return its result; only a reply carrying this request's id counts.

        If anything interrupts the wait (the progress callback raises because Streamlit stopped
        the run, an interrupt...), the worker is asked to cancel and ``pending`` stays set: the
        pool must then :meth:`drain` the worker before lending it to anyone else.
        """
        if self.pending is not None:
            raise RuntimeError(f"worker {self.index} still has request {self.pending} in flight")
        if not self.alive:
            if progress is not None:
                progress(0.0, "starting a compute worker…")
            self.start()
        assert self.connection is not None
        request_id = next(_REQUEST_IDS)
        try:
            self.connection.send_bytes(
                pickle.dumps(("job", request_id, job, kwargs), pickle.HIGHEST_PROTOCOL)
            )
        except OSError:
            return self._crashed(action)
        self.pending = request_id
        deadline = time.monotonic() + (timeout_s or self.settings.timeout_s)
        try:
            while True:
                reply = self._next_reply(deadline, action=action, request_id=request_id)
                if reply.kind == "progress":
                    if progress is not None:
                        progress(reply.fraction, reply.message)
                    continue
                self.pending = None
                return self._outcome(reply, action)
        except BaseException:
            if self.pending == request_id:  # still computing: ask it to stop
                self.abandoned += 1
                self._send_cancel(request_id)
            raise

    def _outcome(self, reply: WorkerReply, action: str) -> Any:
        self.loaded = set(reply.loaded)
        self.peak_rss = max(self.peak_rss, reply.rss_bytes)
        if reply.kind == "result":
            return reply.value
        if reply.kind == "error":
            if reply.error_kind == "memory":
                raise ServiceError(
                    f"Not enough memory to {action}. Try a smaller image, batch size or "
                    "sample count.",
                    retryable=True,
                )
            if reply.error_kind == "unexpected":
                raise ServiceError(f"Could not {action}: {reply.message}.")
            raise ServiceError(reply.message)
        raise ServiceError(f"Could not {action}: the compute worker answered {reply.kind!r}.")

    def _send_cancel(self, request_id: int) -> None:
        if self.connection is None:
            return
        try:
            self.connection.send_bytes(pickle.dumps(("cancel", request_id)))
        except OSError:
            self.stop()

    def drain(self) -> None:
        """Wait for the abandoned request's last message (its result, error or cancellation),
        discarding it; a worker that does not finish within ``cancel_grace_s`` is killed (the next
        request starts a fresh one). Afterwards the worker is free and holds no stale reply."""
        request_id = self.pending
        if request_id is None:
            return
        if not self.alive:
            self.stop()
            return
        deadline = time.monotonic() + self.settings.cancel_grace_s
        try:
            while True:
                reply = self._next_reply(
                    deadline, action="stop an abandoned computation", request_id=request_id
                )
                if reply.kind != "progress":
                    self.loaded = set(reply.loaded)
                    break
        except ServiceError as err:  # it ran past the grace period, crashed or misbehaved
            LOGGER.info("worker %d replaced after an abandoned request: %s", self.index, err)
            self.stop()
        self.pending = None

    def _next_reply(self, deadline: float, *, action: str, request_id: int) -> WorkerReply:
        """Wait for the worker's next message about ``request_id`` while enforcing the time and
        memory limits. Messages about any other request are dropped (and logged)."""
        assert self.connection is not None and self.process is not None
        limit = self.settings.memory_bytes
        while True:
            try:
                ready = self.connection.poll(POLL_S)
            except (OSError, EOFError):
                return self._crashed(action)
            if ready:
                try:
                    data = self.connection.recv_bytes()
                except (EOFError, OSError):
                    return self._crashed(action)
                try:
                    reply = loads(data)
                except (UnsafeReplyError, pickle.UnpicklingError, EOFError, ValueError) as err:
                    LOGGER.error("worker %d sent an unreadable reply: %s", self.index, err)
                    self.stop()
                    raise ServiceError(
                        f"Could not {action}: the compute worker sent a reply that is not plain "
                        "data, so it was stopped. Try again.",
                        retryable=True,
                    ) from err
                if not isinstance(reply, WorkerReply):
                    self.stop()
                    raise ServiceError(f"Could not {action}: unexpected reply from the worker.")
                if reply.request_id != request_id:
                    LOGGER.warning(
                        "worker %d: dropped a %s message of request %d while waiting for %d",
                        self.index,
                        reply.kind,
                        reply.request_id,
                        request_id,
                    )
                    continue
                return reply
            if self.process.poll() is not None:
                return self._crashed(action)
            rss = _rss_bytes(self.process.pid)
            self.peak_rss = max(self.peak_rss, rss)
            if rss > limit:
                self.stop()
                raise ServiceError(
                    f"Stopped: {action} needed more than {limit / 2**30:.1f} GiB of memory "
                    "(the limit per computation). Try a smaller image, batch size or sample "
                    "count.",
                    retryable=True,
                )
            if time.monotonic() > deadline:
                self.stop()
                advice = (
                    "The file may be damaged (a broken HDF5 file can make the reader spin "
                    "forever); check it loads with keras.saving.load_model, or upload another."
                    if action.startswith("load ")
                    else "Try fewer samples, steps or patches, or a smaller image."
                )
                raise ServiceError(
                    f"Stopped: {action} took longer than the time limit. {advice}",
                    retryable=True,
                )

    def _crashed(self, action: str) -> WorkerReply:
        process = self.process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=5)
        self.stop()
        LOGGER.error("worker %d crashed (%s) during: %s", self.index, _signal_name(code), action)
        raise ServiceError(
            f"The computation crashed while trying to {action} (the worker process ended with "
            f"{_signal_name(code)}). The dashboard is still running and starts a fresh worker "
            "for the next request; your model, image and settings are kept. Press Retry to try "
            "again.",
            retryable=True,
        )


class WorkerPool:
    """A fixed number of workers; each request borrows one (preferring one that holds the model)."""

    def __init__(self, settings: WorkerSettings | None = None) -> None:
        self.settings = settings or WorkerSettings.from_environment()
        self.workers = [Worker(i, self.settings) for i in range(self.settings.workers)]
        self._idle = list(self.workers)
        self._condition = threading.Condition()
        self._closed = False

    def _acquire(self, model_key: Hashable | None, progress: ProgressCallback | None) -> Worker:
        with self._condition:
            waited = False
            while not self._idle:
                if self._closed:
                    raise ServiceError("The dashboard is shutting down.")
                if progress is not None and not waited:
                    progress(0.0, "waiting for a free compute worker…")
                waited = True
                self._condition.wait(timeout=1.0)
            if self._closed:
                raise ServiceError("The dashboard is shutting down.")
            chosen = next(
                (w for w in self._idle if model_key is not None and model_key in w.loaded),
                None,
            ) or next((w for w in self._idle if w.alive), self._idle[0])
            self._idle.remove(chosen)
            return chosen

    def _release(self, worker: Worker) -> None:
        with self._condition:
            self._idle.append(worker)
            self._condition.notify()

    def call(
        self,
        job: str,
        kwargs: dict[str, Any] | None = None,
        *,
        action: str,
        model_key: Hashable | None = None,
        progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Run ``job`` in a worker and return its plain-data result.

        Raises :class:`ServiceError` with a plain sentence on every failure; ``retryable`` is set
        when the worker crashed or ran past a limit.
        """
        worker = self._acquire(model_key, progress)
        try:
            return worker.request(
                job, dict(kwargs or {}), action=action, progress=progress, timeout_s=timeout_s
            )
        finally:
            if worker.pending is None:
                self._release(worker)
            else:  # abandoned mid-flight: lend it again only once its late reply is consumed
                self._drain_then_release(worker)

    def _drain_then_release(self, worker: Worker) -> None:
        def run() -> None:
            try:
                worker.drain()
            except BaseException:  # never lend a worker whose state is unknown
                LOGGER.exception("worker %d: draining failed; stopping it", worker.index)
                worker.stop()
            finally:
                worker.pending = None
                self._release(worker)

        threading.Thread(target=run, name=f"worker-{worker.index}-drain", daemon=True).start()

    def broadcast(self, job: str) -> None:
        """Run ``job`` on every running worker that is idle now (e.g. forget loaded models)."""
        with self._condition:
            idle = [w for w in self._idle if w.alive]
            for worker in idle:
                self._idle.remove(worker)
        for worker in idle:
            try:
                worker.request(job, {}, action=job, progress=None, timeout_s=60)
            except ServiceError as err:
                LOGGER.warning("worker %d: %s failed: %s", worker.index, job, err)
            finally:
                self._release(worker)

    def prestart(self) -> None:
        """Start every worker in the background, so the first click does not pay the start-up."""

        def start_all() -> None:
            for _ in self.workers:
                try:
                    self.call("ping", action="start a compute worker")
                except ServiceError as err:
                    LOGGER.warning("prestarting a worker failed: %s", err)

        threading.Thread(target=start_all, name="worker-prestart", daemon=True).start()

    def shutdown(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for worker in self.workers:
            worker.stop()

    @property
    def starts(self) -> int:
        return sum(w.starts for w in self.workers)

    @property
    def peak_rss_bytes(self) -> int:
        return max((w.peak_rss for w in self.workers), default=0)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None and w.alive]


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> WorkerPool:
    """The process-wide pool, created (and its workers started in the background) on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
            _POOL.prestart()
        return _POOL


def existing_pool() -> WorkerPool | None:
    """The process-wide pool if one was created, without creating (or starting) one."""
    with _POOL_LOCK:
        return _POOL


def shutdown_pool() -> None:
    """Stop every worker; the next request creates a fresh pool (reading the environment again)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown()
        _POOL = None


atexit.register(shutdown_pool)


# ------------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------------
class JobCancelled(BaseException):
    """Raised inside a job (at its next progress call) when the parent cancelled the request.

    A ``BaseException``, like ``KeyboardInterrupt``, so that the library's ``except Exception``
    handlers do not turn it into an error reply."""


class _Progress:
    """The job's progress callback: checks for a cancellation of its request at every call and
    sends at most ten updates a second (and always the last)."""

    def __init__(
        self, send: Callable[[WorkerReply], None], connection: Connection, request_id: int
    ) -> None:
        self._send = send
        self._connection = connection
        self._request_id = request_id
        self._last = 0.0

    def check_cancelled(self) -> None:
        while self._connection.poll(0):
            message = pickle.loads(self._connection.recv_bytes())  # from the trusted parent
            if message[0] == "cancel" and message[1] == self._request_id:
                raise JobCancelled(self._request_id)
            # A cancellation of an earlier, finished request: nothing to do. The parent sends
            # no new job while this one is in flight.

    def send_stray(self, reply: WorkerReply) -> None:
        """Send a message as it is (the tests' stand-in for a late reply of another request)."""
        self._send(reply)

    def __call__(self, fraction: float, message: str) -> None:
        self.check_cancelled()
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < 0.1:
            return
        self._last = now
        self._send(
            WorkerReply(
                "progress",
                request_id=self._request_id,
                fraction=float(fraction),
                message=str(message),
            )
        )


def _serve(connection: Connection) -> int:
    import explainers

    # `import explainers` is lazy: load the model code and every method (TensorFlow, Keras,
    # tf-explain...) now, so that their import cost is paid before "ready" (under the start-up
    # limit), not by the first request under its time limit.
    import explainers.explanation
    import explainers.io.models

    explainers.available_methods()

    from . import jobs

    def send(reply: WorkerReply) -> None:
        try:
            data = dumps(reply)
        except Exception as err:  # a job returned something that cannot cross the boundary
            data = dumps(
                WorkerReply(
                    "error",
                    request_id=reply.request_id,
                    error_kind="unexpected",
                    message=f"unpicklable reply: {err}",
                )
            )
        connection.send_bytes(data)

    send(WorkerReply("ready"))
    while True:
        try:
            message = pickle.loads(connection.recv_bytes())  # from the trusted parent
        except (EOFError, OSError):
            return 0  # the dashboard closed the socket (or exited): so do we
        if message[0] == "cancel":
            continue  # its request had already finished (and its reply was sent)
        _, request_id, job, kwargs = message
        try:
            reply = jobs.run(job, kwargs, _Progress(send, connection, request_id))
        except JobCancelled:
            reply = WorkerReply("cancelled", loaded=tuple(jobs.loaded_models()))
        send(dataclasses.replace(reply, request_id=request_id))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m dashboard.worker FD (started by the dashboard)", file=sys.stderr)
        return 2
    return _serve(Connection(int(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
