import json
import math
import shutil

import numpy as np
import pytest

from ocap_core import strict_json
from ocap_core.package import open_package, read_card, resolve_model, write_card


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON")


def test_non_finite_floats_become_null_at_any_depth():
    obj = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": np.float64("nan"), "e": "NaN"}, "f": 3}
    text = strict_json.dumps(obj)
    assert json.loads(text, parse_constant=_refuse) == {"a": None, "b": [1.0, None, [None, 2]],
                                                        "c": {"d": None, "e": "NaN"}, "f": 3}


def test_what_finite_cannot_see_is_refused_not_written():
    with pytest.raises(ValueError, match="Out of range float"):
        strict_json.dumps({"x": np.float32("nan")}, default=float)


def test_a_card_with_a_nan_metric_is_strict_json(tmp_path):
    shutil.copytree(resolve_model("fmnist-cnn"), tmp_path / "pkg")
    card = open_package(str(tmp_path / "pkg")).card
    card.metrics["val_agreement"] = math.nan
    card.provenance["finetune"] = {"history": [{"epoch": 1, "loss": math.inf}]}
    write_card(tmp_path / "pkg", card)
    d = json.loads((tmp_path / "pkg" / "card.json").read_text(), parse_constant=_refuse)
    assert d["metrics"]["val_agreement"] is None and d["provenance"]["finetune"]["history"][0]["loss"] is None
    assert read_card(tmp_path / "pkg").metrics["val_agreement"] is None
