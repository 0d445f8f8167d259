"""A stage's timing line: phases add up to the process's own age, and a stage function's phases nest."""

from __future__ import annotations

import logging
import time

from pipeline.core.timing import Timer, process_age, read_reports


def test_phases_add_up_to_the_process_age(caplog):
    timer = Timer("demo")
    time.sleep(0.05)
    timer.mark("work")
    timer.add({"inner a": 0.01, "inner b": 0.02}, into="work")  # measured inside a stage function
    timer.mark("more")
    assert set(timer.phases()) == {"work", "inner a", "inner b", "more"}  # what a stage function hands on
    with caplog.at_level(logging.INFO, logger="pipeline.core.timing"):
        report = timer.report()
    assert report["work"] >= 0.01  # 0.05 s slept, 0.03 s of it moved to the inner phases
    assert (report["inner a"], report["inner b"]) == (0.01, 0.02)
    assert abs(report["total"] - process_age()) < 0.1  # start (interpreter, imports) + every phase
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert read_reports(f"noise\n{lines}\nmore noise") == {"demo": report}  # what the benchmarks read


def test_phases_of_a_process_beside_are_reported_but_not_added_to_the_total():
    timer = Timer("demo")
    timer.mark("wait")
    timer.beside({"import tensorflow": 2.5, "predict": 2.0}, "evaluate")
    report = timer.report()
    assert (report["evaluate: import tensorflow"], report["evaluate: predict"]) == (2.5, 2.0)
    assert abs(report["total"] - process_age()) < 0.1  # this process's wall time, not 4.5 s more
