"""How many threads torch and OpenCV use: one policy for every heavy command (``--threads``).

The count is, in this order:

1. ``--threads N`` given on the command line;
2. else the environment variable ``VLM3_THREADS``;
3. else the command's own default where it has one (``vlm3 demo`` pins 2 threads, as it always
   has, whatever ``OMP_NUM_THREADS`` says; not with ``VLM3_DEMO_NUMERICS=native``);
4. else ``OMP_NUM_THREADS`` when the caller set it (``torchrun`` sets 1 per process);
5. else the free cores: the CPUs this process may run on (its affinity) minus the 1-minute load
   average, rounded, shared among the local processes of a distributed launch
   (``LOCAL_WORLD_SIZE``), and at least 1.

Why not simply every core: threads beyond the free cores wait for each other. On a 2-core machine
with another process holding one core, one torch thread ran 2.6x faster end to end than two
(3.2x in training). The load average lags by about a minute: right after another heavy command
ended it still counts that command, so give ``--threads`` or ``VLM3_THREADS`` for back-to-back runs.

Commands call :func:`use_threads` once, just before their heavy work: it applies the choice
(torch's intra-op threads, its inter-op threads while that is still allowed, OpenCV's threads),
prints it on a terminal's stderr (``threads: 1 thread (free cores: 2 CPUs - load 1.07)``), and
puts the previous counts back when the command ends. ``vlm3 prepare`` also records it in its report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import typer

ENV = "VLM3_THREADS"

_UNDO: list[Callable[[], None]] = []  # restores of applied choices, run when the command ends


class ThreadsError(ValueError):
    """An unusable thread count (``--threads`` or ``VLM3_THREADS``); the message says which and why."""


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and where it came from (``source``: the flag, variable or rule; ``detail``: its inputs)."""

    threads: int
    source: str
    detail: str = ""

    def describe(self) -> str:
        """One line for the user, e.g. ``1 thread (free cores: 2 CPUs - load 1.07)``."""
        plural = "" if self.threads == 1 else "s"
        return f"{self.threads} thread{plural} ({self.source}{': ' + self.detail if self.detail else ''})"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(
    threads: int | None = None,
    *,
    default: int | None = None,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
    load: float | None = None,
) -> ThreadChoice:
    """The thread count by the module's policy; ``environ``, ``cpus`` and ``load`` (1-minute load
    average) default to this process's. ThreadsError for a count below 1 or an unreadable ``VLM3_THREADS``."""
    env = os.environ if environ is None else environ
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ThreadsError(f"--threads {threads!r} must be a whole number >= 1")
        return ThreadChoice(threads, "--threads")
    raw = env.get(ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ThreadsError(f"{ENV}={raw!r} must be a whole number >= 1 (or unset for the free cores)")
        return ThreadChoice(n, ENV)
    if default is not None:
        return ThreadChoice(default, "this command's default")
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP also allows a nested list "4,2"
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    cpus = available_cpus() if cpus is None else cpus
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    local = env.get("LOCAL_WORLD_SIZE", "1")
    ranks = int(local) if local.isdigit() and int(local) >= 1 else 1
    n = max(1, (cpus - round(load)) // ranks)
    detail = f"{cpus} CPUs - load {load:.2f}" + (f", shared by {ranks} local processes" if ranks > 1 else "")
    return ThreadChoice(n, "free cores", detail)


def apply_threads(choice: ThreadChoice) -> Callable[[], None]:
    """Set torch's and OpenCV's thread counts to ``choice.threads``; returns a function that puts
    the previous ones back.

    A loaded torch gets ``torch.set_num_threads`` and, while torch still allows it (before its
    first inter-op work, once per process), ``set_num_interop_threads``. A torch not loaded yet is
    not imported here (it takes seconds, and many commands never need it): ``OMP_NUM_THREADS`` is
    set instead, which torch reads when it loads.
    """
    import cv2

    n = choice.threads
    undo: list[Callable[[], None]] = []
    old_cv2 = cv2.getNumThreads()
    cv2.setNumThreads(n)
    undo.append(lambda: cv2.setNumThreads(old_cv2))
    if "torch" in sys.modules:
        import torch

        old_torch = torch.get_num_threads()
        torch.set_num_threads(n)
        undo.append(lambda: torch.set_num_threads(old_torch))
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # already set, or inter-op work has run: torch allows it only once, first
            pass
    else:
        old_env = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(n)

        def unset_env() -> None:
            if old_env is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old_env

        undo.append(unset_env)

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def use_threads(threads: int | None, *, default: int | None = None, echo: bool | None = None) -> ThreadChoice:
    """For a command, once, just before its heavy work: choose (:func:`choose_threads`), apply
    (:func:`apply_threads`) and print the choice on stderr (``echo``; default: when stderr is a
    terminal, so that scripted output and one-line errors stay as they are; rank 0 only in a
    distributed launch). A bad ``VLM3_THREADS`` is one ``Error:`` line and exit status 2. The
    previous counts come back when the command ends (:data:`THREADS_OPTION` arranges that)."""
    try:
        choice = choose_threads(threads, default=default)
    except ThreadsError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(2) from None
    _UNDO.append(apply_threads(choice))
    if echo is None:
        echo = sys.stderr.isatty()
    if echo and os.environ.get("RANK", "0") == "0":
        typer.echo(f"threads: {choice.describe()}", err=True)
    return choice


def restore_threads() -> None:
    """Put back the thread counts that :func:`use_threads` changed (newest first)."""
    while _UNDO:
        _UNDO.pop()()


def _threads_option_callback(ctx: typer.Context, value: int | None) -> int | None:
    ctx.call_on_close(restore_threads)  # the command's choice ends with the command (matters in-process, e.g. tests)
    return value


THREADS_HELP = (
    "torch/OpenCV threads (default: VLM3_THREADS; else vlm3 demo: 2; else OMP_NUM_THREADS if set; else the free "
    "cores: CPUs minus the 1-minute load average, at least 1)."
)

THREADS_OPTION: Any = typer.Option(None, "--threads", min=1, help=THREADS_HELP, callback=_threads_option_callback)
"""The shared ``--threads`` option of the heavy commands (train, eval, predict, prepare, demo, serve)."""
