"""Where a stage's time goes: its phases, from the process's own start, logged as one line at the end.

Consumes nothing. Produces one log line per stage process, ``timings train: {"start": 0.31, "config": 0.05,
...}`` (seconds, JSON), which ``benchmarks/compare.py`` reads from ``dvc repro``'s output to break the
pipeline's time down per stage; ``start`` is the time from the process's creation (the interpreter's own
start and the module-level imports) to the timer's creation.

A :class:`Timer` attributes the time since its previous mark to each mark's name; the stage functions keep
their own phases in their results (``TrainResult.timings``), so they stay free of a timer argument.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)
_LINE = re.compile(r"timings (\w+): (\{.*\})")


def process_age() -> float:
    """Seconds since this process was created (Linux: /proc, to 10 ms), 0.0 where that is unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


class Timer:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.times: dict[str, float] = {"start": process_age()}
        self._last = time.perf_counter()
        self.parallel: dict[str, float] = {}

    def mark(self, name: str) -> float:
        """Attribute the time since the previous mark to ``name`` (added up if it recurs); return it."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        self.times[name] = self.times.get(name, 0.0) + elapsed
        return elapsed

    def add(self, phases: dict[str, float], into: str) -> None:
        """Split the time last marked as ``into`` into ``phases`` (measured inside a stage function)."""
        inner = sum(phases.values())
        self.times[into] = max(self.times.get(into, 0.0) - inner, 0.0)
        for name, seconds in phases.items():
            self.times[name] = self.times.get(name, 0.0) + seconds

    def beside(self, phases: dict[str, float], process: str) -> None:
        """Record ``phases`` measured in another process that ran beside this one (:func:`pipeline.model.runtime.forked`):
        reported as ``<process>: <phase>`` and left out of ``total``, which stays this process's wall time."""
        for name, seconds in phases.items():
            self.parallel[f"{process}: {name}"] = seconds

    def phases(self) -> dict[str, float]:
        """The marked phases without ``start``: what a stage function hands its caller for :meth:`add`."""
        return {k: v for k, v in self.times.items() if k != "start"}

    def report(self) -> dict[str, float]:
        rounded = {k: round(v, 2) for k, v in self.times.items() if round(v, 2) or k == "start"}
        rounded["total"] = round(sum(self.times.values()), 2)
        rounded.update({k: round(v, 2) for k, v in self.parallel.items()})
        log.info("timings %s: %s", self.stage, json.dumps(rounded))
        return rounded


def read_reports(output: str) -> dict[str, dict[str, float]]:
    """The ``timings <stage>: {...}`` lines in a command's output (what :meth:`Timer.report` logs), as
    {stage: {phase: seconds}}; a stage reported twice keeps its last line."""
    return {m.group(1): json.loads(m.group(2)) for m in _LINE.finditer(output)}
