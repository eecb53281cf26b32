"""``ocap bench stress``: the report's checks and figures from made-up runs (no figure is ever ``nan``; a run
whose swaps overlapped no request misses that check), and the quick run itself (what CI runs): 0 lost
counts, 0 failed requests, at least one swap under the clients' requests."""



from bench import stress


def _result(**over):
    reqs = [(100.0 + i * 0.01, 2.0, True) for i in range(1000)]
    res = {"quick": True, "clients": 4, "cores": 2, "load": {"idle": 1.0, "stress": 4.0},
           "idle": stress.phase_figures(reqs, 100.0, 105.0), "stress": stress.phase_figures(reqs, 105.0, 110.0),
           "answered": 1000, "failed": 0, "counted": 1000, "exit_status": 0, "cycles": 1, "forced_rollbacks": 4,
           "notes": [], "swaps": stress.swap_overlaps(reqs, [{"kind": "swap", "ts": 106.0, "detail": {"seconds": 0.1}}]),
           "events": {"deploy": 1}, "minutes": 2.0}
    res.update(over)
    return res


def test_phase_figures_and_overlaps():
    reqs = [(0.0, 500.0, True), (0.2, 10.0, False), (1.0, 100.0, True), (5.0, 10.0, True)]
    p = stress.phase_figures(reqs, 0.0, 2.0)
    assert (p["answered"], p["failed"], p["per_s"]) == (2, 1, 1.0)
    assert stress.phase_figures(reqs, 10.0, 12.0)["p99"] is None       # nothing in the phase: no figure
    swaps = stress.swap_overlaps(reqs, [{"kind": "swap", "ts": 1.05, "detail": {"seconds": 0.1}},
                                        {"kind": "deploy", "ts": 1.0, "detail": {}},
                                        {"kind": "swap", "ts": 3.0, "detail": {"seconds": 0.5}}])
    assert [s["overlapped"] for s in swaps] == [1, 0]           # the request of 1.0-1.1 s; none in 2.5-3 s


def test_report_meets_its_checks_and_never_says_nan():
    md = stress.markdown(_result(), "test machine")
    assert "nan" not in md and md.count("| MET |") == 4 and "MISSED" not in md
    assert "| stress ÷ idle | | | | 1.00× | 1.00× | 1.00× |" in md


def test_lost_counts_failures_and_no_overlap_are_missed():
    empty = stress.phase_figures([], 0.0, 10.0)
    md = stress.markdown(_result(counted=990, failed=3, swaps=[], stress=empty, notes=["no deploy within 300 s"]),
                         "test machine")
    assert "nan" not in md and "no data" in md
    assert "990 counted, 1000 replies (+10 lost) | equal | MISSED" in md
    assert "| failed requests | 3 of 1003 | 0 | MISSED |" in md
    assert "none: no swap overlapped a client request" in md and "Not completed: no deploy within 300 s." in md


# The quick run itself is part of `ocap bench all --quick` (tests/bench/test_all_quick.py), which checks
# its verdicts: running it here too would cost CI another 3-4 minutes for the same figures.
