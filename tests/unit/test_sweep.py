"""The sweep's results table, from run records (no store)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pipeline.run.sweep import add_significance, format_csv, format_table
from pipeline.tracking.sweeps import results_rows


def fake_run(overrides: str, status: str = "FINISHED", **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(
        data=SimpleNamespace(tags={"overrides": overrides}, metrics=metrics),
        info=SimpleNamespace(status=status, run_id=f"id-{overrides}"),
    )


def test_results_table_is_sorted_best_first():
    runs = [
        fake_run("optimizer=sgd", test_accuracy=0.41, test_loss=2.26, train_time_s=5.8),
        fake_run("optimizer=adam", "FAILED"),
        fake_run("optimizer=rmsprop", test_accuracy=0.92, test_loss=0.25, train_time_s=3.7),
    ]
    rows = results_rows(runs)
    assert [r["overrides"] for r in rows] == ["optimizer=rmsprop", "optimizer=sgd", "optimizer=adam"]
    lines = format_table(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["overrides", "test_accuracy", "test_loss", "train_time_s", "status", "run_id"]
    assert set(lines[1]) <= set("|-: ")
    assert [c.strip() for c in lines[2].strip("|").split("|")][:4] == ["optimizer=rmsprop", "0.9200", "0.2500", "3.70"]
    assert [c.strip() for c in lines[4].strip("|").split("|")][:5] == ["optimizer=adam", "-", "-", "-", "FAILED"]
    assert format_csv(rows).splitlines()[1].startswith("optimizer=rmsprop,0.92,0.25,3.7,FINISHED")


def test_each_row_shows_mcnemars_p_against_the_best_job():
    labels = np.arange(1000) % 10
    rng = np.random.default_rng(0)

    def predictions(accuracy: float) -> np.ndarray:
        wrong = rng.random(1000) > accuracy
        return np.where(wrong, (labels + 1) % 10, labels)

    preds = {"id-a": predictions(0.99), "id-b": predictions(0.985), "id-c": predictions(0.90)}
    runs = [
        fake_run(name, test_accuracy=float(np.mean(p == labels)))
        for name, p in (("a", preds["id-a"]), ("b", preds["id-b"]), ("c", preds["id-c"]))
    ]
    rows = results_rows(runs)
    add_significance(rows, lambda run_id: (preds[run_id], labels) if run_id in preds else None)
    p = {r["overrides"]: r["p_vs_best"] for r in rows}
    assert p["a"] is None  # the best itself
    assert p["b"] > 0.05 and p["c"] < 1e-6  # a close second is likely noise; a clear gap is not
    assert "p_vs_best" in format_table(rows).splitlines()[0]
