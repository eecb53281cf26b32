"""Policy settings are declared once, in the policy modules: ocapd's INI keys, their defaults and
ranges come from those declarations, and a setting out of range is refused by the INI and by the
dataclass alike, naming the key."""

import dataclasses

import pytest

from ocap_daemon import settings
from ocap_daemon.config import Config, ConfigError, _build, section_keys
from ocap_daemon.errors import DaemonError
from ocap_daemon.gate import GateConfig
from ocap_daemon.stability import StabilityConfig
from ocap_daemon.watch import DriftConfig, ProbationConfig

POLICIES = [("stability", StabilityConfig), ("gate", GateConfig), ("drift", DriftConfig),
            ("probation", ProbationConfig)]


@pytest.mark.parametrize("section,cls", POLICIES)
def test_the_ini_section_is_the_policy_dataclass(section, cls):
    assert list(section_keys(section)) == [f.name for f in dataclasses.fields(cls)]
    built = getattr(Config.defaults(), section)
    assert type(built) is cls
    assert built == (cls().resolved(Config.defaults().personalize.max_loss) if cls is GateConfig else cls())


@pytest.mark.parametrize("section,cls,key,value", [
    ("stability", StabilityConfig, "windows", 1), ("stability", StabilityConfig, "coverage", 0.0),
    ("gate", GateConfig, "min_speedup", 0.5), ("gate", GateConfig, "latency_runs", 5),
    ("drift", DriftConfig, "max_outside_share", 1.5), ("drift", DriftConfig, "min_checks", 0),
    ("probation", ProbationConfig, "max_disagreement", -0.1), ("probation", ProbationConfig, "duration", 0)])
def test_out_of_range_is_refused_by_the_ini_and_the_dataclass(section, cls, key, value):
    with pytest.raises(ConfigError) as e:
        _build({section: {key: str(value)}}, "ocap.ini", None)
    assert f"[{section}] {key}" in str(e.value) and "ocap.ini" in str(e.value)
    with pytest.raises(DaemonError) as e:
        cls(**{key: value})
    assert f"[{section}] {key} = {value!r}" in str(e.value)


@pytest.mark.parametrize("range_text,inside,outside", [
    ("> 0", [1e-9, 5], [0, -1]), (">= 2", [2, 3], [1.99]), ("[0, 1]", [0, 1], [-0.01, 1.01]),
    ("(0, 1]", [1, 0.5], [0]), ("[0, 1)", [0], [1]), ("0..19", [0, 19], [20])])
def test_ranges(range_text, inside, outside):
    assert all(settings.within(v, range_text) for v in inside)
    assert not any(settings.within(v, range_text) for v in outside)


@pytest.mark.parametrize("kind,value,text", [(settings.DURATION, 600.0, "10min"), (settings.DURATION, 0.05, "50ms"),
                                             (settings.DURATION, 90.0, "90s"), (settings.DURATION, 7200.0, "2h"),
                                             (settings.AUTO_FLOAT, None, "auto"), (settings.FLOAT, 0.1, "0.1")])
def test_defaults_are_written_as_the_ini_reads_them(kind, value, text):
    assert settings.default_text(kind, value) == text


def test_drift_margin_is_over_the_stable_baseline():
    cfg = DriftConfig(max_outside_share=0.1)
    assert cfg.outside_limit(0.05) == pytest.approx(0.15) and cfg.outside_limit(0.95) == 1.0


@pytest.mark.parametrize("outside,drift", [(35, False), (40, False), (45, True)])
def test_drift_is_judged_past_the_baseline_plus_the_margin(outside, drift):
    from ocap_daemon.watch import drift_reason

    hist = {0: 100 - outside, 9: outside}
    why = drift_reason(hist, {0, 3}, 0, 100, DriftConfig(min_checks=50, max_outside_share=0.1), baseline=0.3)
    assert (why is not None) == drift
    if drift:
        assert "45.0% of 100 teacher-checked frames (limit 40.0%)" in why
