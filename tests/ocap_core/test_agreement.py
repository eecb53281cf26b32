"""The agreement measure the search and the gate share (numpy only, so it runs torch-free too)."""

import numpy as np
import pytest

from ocap_core.agreement import (
    MIN_DISAGREEMENTS,
    agreement_costs,
    expected_agreement,
    judged_images_needed,
    restricted_softmax,
    smallest_loss_shown,
    standard_error,
)


def test_a_sure_teacher_gives_plain_agreement():
    p = np.eye(3)[[0, 1, 2, 2]]
    assert expected_agreement(p, [0, 1, 2, 2]) == 1.0
    assert expected_agreement(p, [0, 1, 2, 0]) == pytest.approx(0.75)


def test_a_disagreement_where_the_teacher_hesitates_costs_little():
    p = np.array([[0.55, 0.45], [0.99, 0.01]])
    assert expected_agreement(p, [1, 0]) == pytest.approx(1 - 0.10 / 2)
    assert expected_agreement(p, [0, 1]) == pytest.approx(1 - 0.98 / 2)


def test_restricted_softmax_renormalizes_over_the_kept_columns():
    p = np.array([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    r = restricted_softmax(p, [0, 2])
    assert np.allclose(r, [[0.625, 0.375], [1 / 9, 8 / 9]]) and np.allclose(r.sum(1), 1)


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        expected_agreement(np.zeros((0, 2)), [])


def test_costs_and_their_standard_error():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    costs = agreement_costs(p, [0, 1, 0, 1])
    assert np.allclose(costs, [0, 0.8, 0, 0.2])
    padded = np.append(costs, 1.0)                  # one pseudo-image, a sure disagreement
    assert standard_error(costs) == pytest.approx(np.std(padded, ddof=1) / np.sqrt(len(padded)))
    # no disagreement seen is no proof of none: about 1/n, smaller with more images
    assert 0.9 / 51 < standard_error(np.zeros(50)) < 1.1 / 51
    assert standard_error(np.zeros(500)) < standard_error(np.zeros(50))


@pytest.mark.parametrize("max_loss", [0.5, 1.0, 2.0, 5.0, 40.0])
@pytest.mark.parametrize("z", [1.0, 4.0])
def test_judged_images_needed_fit_several_disagreements_in_the_budget(max_loss, z):
    n = judged_images_needed(max_loss, z)
    assert smallest_loss_shown(n, z) <= max_loss                     # the budget can be shown at all ...
    assert 100.0 * MIN_DISAGREEMENTS / n <= max_loss + 1e-9           # ... and no single image decides it
    # and no fewer would do both
    assert smallest_loss_shown(n - 1, z) > max_loss or 100.0 * MIN_DISAGREEMENTS / (n - 1) > max_loss + 1e-9


def test_judged_images_needed_by_the_trigger():
    assert judged_images_needed(1.0) == 300          # what the search's refusal and ocapd's trigger wait for
    assert judged_images_needed(1.0, z=4.0) > 300    # a stricter bound: showing the budget at all binds


@pytest.mark.parametrize("n", [1, 10, 99, 150, 300, 1000])
def test_the_smallest_budget_n_images_judge_is_judged_images_needed_turned_round(n):
    from ocap_core.agreement import smallest_budget

    budget = smallest_budget(n)
    assert judged_images_needed(budget) <= n < judged_images_needed(budget * 0.99)
