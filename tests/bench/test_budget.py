"""bench.budget: the section's table and verdict from a result (the searches themselves run in ``bench all``)."""

import pytest

from bench.budget import judge, markdown


def _row(load, epochs, wall, levels=(1.5, 2.0, 3.0), accepted=(True, True, False)):
    return {"load": load, "wall_s": wall, "cpu_s": 60.0, "loadavg": 1.0, "levels": list(levels),
            "accepted": list(accepted), "epochs": epochs, "mac_reduction": 2.01, "val_agreement": 0.9912,
            "stopped": "over_budget"}


@pytest.mark.parametrize("busy,verdict", [({}, "MET"), ({"epochs": 39}, "MISSED"), ({"mac_reduction": 2.46}, "MISSED"),
                                          ({"accepted": [True, False, False]}, "MISSED"),
                                          ({"val_agreement": 0.9913}, "MISSED")])
def test_the_loaded_search_must_be_the_idle_one_done_later(busy, verdict):
    res = {"rows": [_row("idle", 40, 70.0), dict(_row("busy", 40, 140.0), **busy)], "budget": 160, "nice": 19,
           "quick": False, "seed": 0, "max_loss": 1.0}
    [(target, measured, got)] = judge(res)
    assert got == verdict and target.startswith("busy: the same search") and f"{busy.get('epochs', 40)} vs 40" in measured
    assert "2.00× the wall time" in measured
    text = markdown(res, "2 cores")
    assert "| busy | 140 | 60 | " in text and "| idle | 70 | 60 | 1.5 → 2 → 3✗ | 40 | 2.01× | 0.9912 |" in text
    assert f"| {verdict} |" in text and "--work-epochs 160 --time-budget 600" in text and "nice 19" in text


def test_without_both_runs_there_is_no_verdict():
    assert judge({"rows": [_row("idle", 40, 70.0)]}) == []
