"""Long jobs that outlive a script run: a dataset audit and its analysis run in a thread of this
process that waits on a compute worker, not in the page script.

Why not in the script, as an explanation is: Streamlit stops a script run by raising inside its
next Streamlit call whenever the user touches any widget (or leaves the page). An explanation
takes seconds, so abandoning it and computing it again is cheap; an audit takes minutes, and
every click on the page must not cancel it. So the page starts a :class:`Task` here and only
*reads* its progress (``fraction``, ``message``) on each run; a stopped script run loses nothing.

Cancelling is explicit (:meth:`Task.cancel`): the task's progress callback then raises
:class:`TaskCancelled` at the job's next progress message, which abandons the worker request; the
worker stops at its own next progress call (``dashboard.worker``). The audit's run folder keeps
every committed chunk, so a cancelled audit resumes where it stopped.

Tasks are shared by every session of the server and keyed by what they compute (the run folder),
so two users who start the same audit watch one task instead of fighting over the folder's lock.
No Streamlit here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from .protocol import ServiceError

LOGGER = logging.getLogger(__name__)

#: Finished tasks kept for the pages to read (their outcome), oldest dropped first.
KEEP_FINISHED = 64

Status = Literal["running", "done", "failed", "cancelled"]


class TaskCancelled(Exception):
    """Raised by a task's progress callback once the task was cancelled."""


class TaskRefused(Exception):
    """A task cannot start now (too many of its kind are running); the message says why."""


@dataclass(eq=False)
class Task:
    """One job running in a thread. Read ``status``, ``fraction``, ``message``, ``result`` and
    ``error`` from any thread; only the task's own thread writes them."""

    key: Hashable
    kind: str
    label: str
    status: Status = "running"
    fraction: float = 0.0
    message: str = "starting…"
    result: Any = None
    error: str | None = None
    #: The service's retry key of a failure that trying again may fix (a crash, a limit).
    retry_key: Hashable | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def cancel(self) -> None:
        """Ask the job to stop at its next progress message."""
        self._cancel.set()
        if self.running:
            self.message = "stopping at the next image…"

    def progress(self, fraction: float, message: str) -> None:
        """The job's progress callback: records the progress, raises once cancelled."""
        if self._cancel.is_set():
            raise TaskCancelled(self.label)
        self.fraction = min(1.0, max(0.0, float(fraction)))
        self.message = str(message)


_TASKS: OrderedDict[Hashable, Task] = OrderedDict()
_LOCK = threading.Lock()


def get(key: Hashable) -> Task | None:
    """The task computing ``key`` (running or finished), or None."""
    with _LOCK:
        return _TASKS.get(key)


def running(kind: str) -> list[Task]:
    """The running tasks of ``kind``."""
    with _LOCK:
        return [t for t in _TASKS.values() if t.kind == kind and t.running]


def start(
    key: Hashable,
    kind: str,
    label: str,
    work: Callable[[Callable[[float, str], None]], Any],
    *,
    limit: int | None = None,
    limit_reason: str = "",
) -> Task:
    """Run ``work(progress)`` in a new thread as the task ``key``; a task already running for
    ``key`` is returned instead of starting a second one.

    Raises :class:`TaskRefused` when ``limit`` tasks of ``kind`` are running already."""
    with _LOCK:
        current = _TASKS.get(key)
        if current is not None and current.running:
            return current
        busy = [t for t in _TASKS.values() if t.kind == kind and t.running]
        if limit is not None and len(busy) >= limit:
            names = ", ".join(t.label for t in busy)
            raise TaskRefused(
                f"{len(busy)} {kind} job{'s are' if len(busy) > 1 else ' is'} already running on "
                f"this server ({names}){limit_reason}. Wait for it to finish (or cancel it), "
                "then start again: nothing you chose here is lost."
            )
        task = Task(key=key, kind=kind, label=label)
        _TASKS[key] = task
        _TASKS.move_to_end(key)
        _forget_old()
    thread = threading.Thread(target=_run, args=(task, work), name=f"task-{kind}", daemon=True)
    thread.start()
    return task


def _forget_old() -> None:
    finished = [k for k, t in _TASKS.items() if not t.running]
    for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
        del _TASKS[key]


def _run(task: Task, work: Callable[[Callable[[float, str], None]], Any]) -> None:
    try:
        result = work(task.progress)
    except TaskCancelled:
        task.status, task.message = "cancelled", "cancelled"
    except ServiceError as err:
        task.error = str(err)
        task.retry_key = err.retry_key if err.retryable else None
        task.status = "failed"
    except Exception as err:  # the user reads one line; the log keeps the traceback
        LOGGER.exception("task %s failed", task.label)
        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        task.error = f"Could not {task.label}: unexpected {type(err).__name__}" + (
            f" ({detail})." if detail else "."
        )
        task.status = "failed"
    else:
        task.result = result
        task.fraction, task.status = 1.0, "done"
    finally:
        task.finished = time.monotonic()


def wait(key: Hashable, timeout: float) -> Task | None:
    """Block until the task ``key`` is no longer running or ``timeout`` seconds passed (tests and
    scripts; the pages never wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = get(key)
        if task is None or not task.running:
            return task
        time.sleep(0.05)
    return get(key)


def clear_finished() -> None:
    """Forget every finished task (tests)."""
    with _LOCK:
        for key in [k for k, t in _TASKS.items() if not t.running]:
            del _TASKS[key]
