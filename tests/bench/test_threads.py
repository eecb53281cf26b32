"""bench.threads: the section's table and verdicts from a result (the timing itself runs in ``bench all``)."""

from bench.threads import judge, markdown


def _row(load, threads, policy, seconds):
    return {"load": load, "threads": threads, "wait_policy": policy, "epoch_s": seconds, "epochs_timed": 2,
            "loadavg": 0.5, "auto": 1 if load != "idle" else 2, "params_kept": 0.5, "images": 128}


def test_the_workers_choice_is_judged_against_the_fastest_cell_under_load():
    rows = [_row("idle", 1, "PASSIVE", 0.4), _row("idle", 2, "default", 0.25), _row("idle", 2, "PASSIVE", 0.3),
            _row("busy", 1, "PASSIVE", 1.1), _row("busy", 2, "default", 28.0), _row("busy", 2, "PASSIVE", 10.3)]
    res = {"rows": rows, "auto": {"idle": 2, "busy": 1}, "ncpu": 2, "images": 128, "epochs": 2, "cap_s": 10.0,
           "quick": True, "minutes": 1.8}
    (faster, f_measured, f_verdict), (near, n_measured, n_verdict) = judge(res)
    assert faster.startswith("busy") and "1.1 s vs 28.0 s (25.5×)" in f_measured and f_verdict == "MET"
    assert "1.1 s vs 1.1 s" in n_measured and n_verdict == "MET"
    text = markdown(res, "2 cores")
    assert "| busy | 2 | default | 28.00 | 28.00–28.00 | 2 | 0.50 | 1 |" in text and "quick mode" in text
    res["auto"]["busy"] = 2                         # had auto picked 2 threads: 10.3 s, 2.7× faster, 9× the best
    assert [v for _, _, v in judge(res)] == ["MISSED", "MISSED"]
