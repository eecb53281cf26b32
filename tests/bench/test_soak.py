"""The soak's figures: RSS taken at the same point of every cycle, its second-half growth and the plot."""

import xml.etree.ElementTree as ET

import pytest

from bench.soak import markdown, per_cycle, second_half_growth, svg


def samples(rss_of_t, seconds=1000, every=5.0):
    return [{"t": t, "ts": 1e9 + t, "rss": rss_of_t(t), "fds": 12, "threads": 8, "db": 4096, "cache": 8192}
            for t in (every * (i + 1) for i in range(int(seconds / every)))]


def test_the_point_of_each_cycle_is_the_first_sample_after_its_gate():
    s = samples(lambda t: 100 * 2 ** 20)
    pts = per_cycle(s, [1e9 + 7, 1e9 + 12, 1e9 + 13, 1e9 + 2000])
    assert [p["t"] for p in pts] == [10, 15]         # two gates in one sampling period count once; none after the end


@pytest.mark.parametrize("slope_mb_per_hour", [0.0, 10.0, -5.0])
def test_second_half_growth_follows_the_trend_and_ignores_the_first_half(slope_mb_per_hour):
    # a large jump in the first half (warm-up) must not count; a steady slope in the second must
    rss = lambda t: (80 if t < 400 else 100) * 2 ** 20 + slope_mb_per_hour * 2 ** 20 * t / 3600  # noqa: E731
    s = samples(rss, seconds=3600)
    g = second_half_growth(per_cycle(s, [x["ts"] for x in s[::6]]), 3600)
    assert g["mb_per_hour"] == pytest.approx(slope_mb_per_hour, abs=1e-6)
    expected = rss(3600 - 5 * 30 / 2) / rss(1800 + 5 * 30 / 2) - 1      # medians of the first and last 5 points
    assert g["growth"] == pytest.approx(expected, abs=2e-3)


def test_too_few_cycles_is_said_not_guessed():
    s = samples(lambda t: 100 * 2 ** 20, seconds=200)
    res = {"seconds": 200, "rate": 300, "samples": s, "per_cycle": per_cycle(s, [s[3]["ts"]]), "answered": 5,
           "failed": 0, "cycles": {"gate": 1}}
    assert second_half_growth(res["per_cycle"], 200) is None
    text = markdown(res, "test machine", quick=False)
    assert "missing: 1 gates in all" in text and "MISSED" in text and "nan" not in text


def test_the_plot_is_well_formed_svg_with_one_dot_per_cycle():
    s = samples(lambda t: (90 + t / 100) * 2 ** 20)
    res = {"samples": s, "per_cycle": per_cycle(s, [x["ts"] for x in s[::10]])}
    root = ET.fromstring(svg(res))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}circle")) == len(res["per_cycle"]) == 20
    assert len(root.find(f"{ns}polyline").get("points").split()) == len(s)


def test_the_soak_config_is_valid_and_lifts_the_cap_and_both_cooldowns(tmp_path):
    from bench.soak import soak_config
    from ocap_daemon.config import load_config

    ini = tmp_path / "ocap.ini"
    ini.write_text(soak_config(tmp_path, 300.0), encoding="utf-8")
    cfg = load_config(ini)
    assert cfg.personalize.daily_cap == 0 and cfg.personalize.cooldown == 5.0 and cfg.drift.cooldown == 5.0
    assert cfg.personalize.rule == "personalize" and [s.type for s in cfg.sources.values()] == ["replay"]
