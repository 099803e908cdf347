"""PBO by CSCV and the promote gate, on cases that can be checked by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from farmkit.research.overfit import Verdict, gate, pbo, pbo_many, splits_for


def _blocks(means, rows=4, eps=0.001):
    """One column of returns: ``rows`` rows per block at the block's mean, ± eps alternating (so every
    block has the same spread)."""
    wiggle = np.tile([eps, -eps], rows // 2)
    return np.concatenate([m + wiggle for m in means])


def test_a_trial_best_in_every_split_has_pbo_zero_and_the_top_logit():
    rng = np.random.default_rng(3)
    base = rng.normal(0.0, 0.01, size=(64, 1))
    # Same noise for all, drifts 0 < 1 < ... < 4 basis points: the order of Sharpe ratios never changes.
    matrix = pd.DataFrame(base + np.arange(5) * 0.0001 + rng.normal(0, 1e-7, size=(64, 5)))
    res = pbo(matrix, n_splits=8)
    assert res.pbo == 0.0
    assert res.n_trials == 5 and res.n_splits == 8 and res.n_combinations == math.comb(8, 4)
    # Chosen trial ranks 5 of 5 out of sample every time: logit ln((5/6) / (1/6)) = ln 5.
    np.testing.assert_allclose(res.logits, math.log(5))
    assert (res.oos_sharpe > res.oos_sharpe.min() - 1).all() and res.prob_oos_loss < 1


def test_a_search_whose_in_sample_best_is_always_worst_out_of_sample_has_pbo_one():
    # A's block means sum to zero and B = -A: whichever wins the chosen half loses the other half.
    a = _blocks([4e-3, 1e-3, -2e-3, -3e-3])
    res = pbo(np.column_stack([a, -a]), n_splits=4)
    assert res.n_combinations == 6
    assert res.pbo == 1.0
    np.testing.assert_allclose(res.logits, math.log((1 / 3) / (2 / 3)))   # rank 1 of 2


def test_pure_noise_has_pbo_near_one_half():
    returns = np.random.default_rng(11).normal(0.0, 0.01, size=(40, 200, 8))
    values = pbo_many(returns, n_splits=8)
    assert abs(values.mean() - 0.5) < 0.08
    assert values[3] == pytest.approx(pbo(returns[3], n_splits=8).pbo)


def test_pbo_says_what_is_wrong_with_its_input():
    noise = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="even"):
        pbo(noise, n_splits=5)
    with pytest.raises(ValueError, match="at least 2"):
        pbo(noise[:, :1])
    with pytest.raises(ValueError, match="40 periods cannot fill 32 blocks"):
        pbo(noise, n_splits=32)
    assert splits_for(40) == 16 and splits_for(30) == 14 and splits_for(7) is None


def test_gate_passes_a_deflated_sharpe_above_the_threshold_with_a_low_pbo():
    verdict = gate(0.97, 0.1)
    assert verdict == Verdict(True, verdict.reason) and verdict
    assert "DSR 0.970" in verdict.reason and "PBO 0.100" in verdict.reason


def test_gate_refuses_a_low_dsr_and_says_what_it_means_and_how_to_override():
    verdict = gate(0.62, 0.2, override="run farm promote with --accept-overfit")
    assert not verdict.passed
    assert "DSR 0.620 < 0.95" in verdict.reason and "luck" in verdict.reason
    assert "PBO" not in verdict.reason
    assert verdict.reason.endswith("To promote anyway, run farm promote with --accept-overfit.")


def test_gate_refuses_a_high_pbo_and_names_both_problems_when_both_fail():
    only_pbo = gate(0.99, 0.7)
    assert not only_pbo and "PBO 0.700 > 0.5" in only_pbo.reason and "DSR" not in only_pbo.reason
    both = gate(0.5, 0.7)
    assert "DSR 0.500" in both.reason and "PBO 0.700" in both.reason


def test_gate_without_a_pbo_decides_on_dsr_and_refuses_an_undefined_dsr():
    assert gate(0.99, None).passed and "not measured" in gate(0.99, None).reason
    assert not gate(float("nan"), 0.1) and "undefined" in gate(float("nan"), 0.1).reason
    assert gate(0.9, 0.3, min_dsr=0.9).passed and not gate(0.99, 0.3, max_pbo=0.25).passed
