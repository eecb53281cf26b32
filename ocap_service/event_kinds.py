"""Every kind of event the ``events`` table holds, declared once. Writers record ``Event.X``; readers
(metrics, the trigger's daily cap, the demo and its report, the benchmarks) match ``Event.X``; the
event log refuses a kind declared nowhere, so a typo fails in the tests, not silently in a count.
``Event`` is a ``str`` enum: its members equal their names in the table and in JSON."""

from enum import Enum


class Event(str, Enum):
    # the serving plane
    SERVING_STARTED = "serving_started"            # a server opened its models
    SERVING_STOPPED = "serving_stopped"
    PROVIDER_FALLBACK = "provider_fallback"        # a model got a later execution provider than asked
    SWAP = "swap"                                  # the served model changed
    SWAP_REFUSED = "swap_refused"                  # a model to serve failed its checks; the old one serves on
    FRAMES_REJECTED = "frames_rejected"            # a source's frames could not be read
    SAMPLES_FORGOTTEN = "samples_forgotten"        # the sample cache was emptied
    CACHE_WRITE_FAILED = "cache_write_failed"      # troubles: at most one a minute each
    TEACHER_CHECK_FAILED = "teacher_check_failed"
    FLUSH_FAILED = "flush_failed"
    # the daemon
    DAEMON_STARTED = "daemon_started"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_REJECTED = "config_rejected"
    PAUSED = "paused"                              # ocapctl pause / resume
    RESUMED = "resumed"
    # a personalization
    PERSONALIZE_STARTED = "personalize_started"
    PERSONALIZE_PROGRESS = "personalize_progress"  # a worker's stage finished
    SEARCH_LEVEL = "search_level"                  # a level the search tried
    PERSONALIZE_FINISHED = "personalize_finished"  # a candidate was written
    PERSONALIZE_FAILED = "personalize_failed"      # failed, killed or crashed (state says which)
    WORKER_PAUSED = "worker_paused"                # the resource guard stopped or continued the worker
    WORKER_RESUMED = "worker_resumed"
    INT8 = "int8"                                  # the INT8 child kept or not
    GATE = "gate"                                  # the gate's verdict (passed true/false)
    DEPLOY = "deploy"
    DEPLOY_FAILED = "deploy_failed"
    PROBATION_PASSED = "probation_passed"
    PROBATION_FAILED = "probation_failed"
    # the ways back
    ROLLBACK = "rollback"
    DRIFT = "drift"                                # reverted to the base on drift
    REVERT = "revert"                              # reverted to the base for another reason

    def __str__(self) -> str:                      # the value, as in the table, also in f-strings
        return self.value

    __format__ = str.__format__


def kind_name(kind: str) -> str:
    """The table's name of ``kind`` (an ``Event`` or its value); a kind declared nowhere is an error."""
    try:
        return Event(kind).value
    except ValueError:
        from .errors import ServiceError

        raise ServiceError(f"no event kind {kind!r} is declared in ocap_service/event_kinds.py") from None
