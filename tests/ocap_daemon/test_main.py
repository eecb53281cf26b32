"""``ocap_daemon.main``'s log levels: at ``log_level = info`` the journal got an APScheduler line for every
job run (the policy job runs every few seconds); those lines are below info now, and back at debug."""

import logging
import threading

import pytest

from ocap_daemon.main import QUIET_LOGGERS, set_log_level


@pytest.fixture
def restore_levels():
    names = ["", "apscheduler", *QUIET_LOGGERS]
    saved = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


def _run_scheduler(runs: int = 4) -> None:
    """A real BackgroundScheduler as the daemon builds it, until a 0.05 s interval job ran ``runs`` times."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    done, count = threading.Event(), [0]

    def job() -> None:
        count[0] += 1
        if count[0] >= runs:
            done.set()

    sched = BackgroundScheduler(timezone="UTC", executors={"default": ThreadPoolExecutor(2)},
                                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    sched.add_job(job, "interval", seconds=0.05, id="policy")
    sched.start()
    try:
        assert done.wait(30), "the job did not run"
    finally:
        sched.shutdown(wait=True)


def _per_run_lines(records) -> list:
    return [r.getMessage() for r in records if r.name.startswith("apscheduler") and "job" in r.getMessage().lower()
            and r.levelno < logging.WARNING]


def test_at_info_a_running_scheduler_logs_no_per_run_lines(caplog, restore_levels):
    caplog.set_level(logging.DEBUG)       # the capturing handler takes everything; the loggers decide
    set_log_level("info")
    _run_scheduler()
    assert _per_run_lines(caplog.records) == []
    assert logging.getLogger("ocapd").isEnabledFor(logging.INFO)


def test_at_debug_the_per_run_lines_are_there(caplog, restore_levels):
    caplog.set_level(logging.DEBUG)
    set_log_level("debug")
    _run_scheduler()
    lines = _per_run_lines(caplog.records)
    assert any("executed successfully" in m for m in lines), lines


def test_warning_and_error_levels_apply_to_the_root(restore_levels):
    set_log_level("warning")
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("apscheduler.executors.default").getEffectiveLevel() == logging.WARNING
    set_log_level("error")
    assert logging.getLogger().level == logging.ERROR
    assert logging.getLogger("apscheduler.scheduler").getEffectiveLevel() == logging.ERROR
