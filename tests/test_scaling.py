"""llmbook.scaling: fits recover known laws from noisy synthetic points; compute in closed form; the frontier."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from llmbook.scaling import (
    BESIROGLU_2024,
    CHINCHILLA,
    CHINCHILLA_TABLE_3,
    PF_DAY,
    Chinchilla,
    PowerLaw,
    fit_chinchilla,
    fit_power_law,
    kaplan_flops_per_token,
    kaplan_optimal_params,
    palm_flops_per_token,
    pf_days,
    training_flops,
)


def noisy(values, scale, seed=0):
    return values * np.exp(np.random.default_rng(seed).normal(0, scale, len(values)))


def test_fit_power_law_recovers_kaplans_law_from_noisy_points():
    n = np.logspace(4, 9, 12)
    truth = PowerLaw(x_c=8.8e13, alpha=0.076)  # Kaplan's L(N)
    fit = fit_power_law(n, noisy(truth(n), 0.003))
    assert fit.E == 0 and abs(fit.alpha - 0.076) < 0.003
    assert abs(math.log(fit.x_c / 8.8e13)) < 0.5
    exact = fit_power_law(n, truth(n))
    assert exact.alpha == pytest.approx(0.076, rel=1e-9) and exact.x_c == pytest.approx(8.8e13, rel=1e-6)


def test_fit_power_law_with_an_irreducible_loss():
    n = np.logspace(3, 8, 15)
    truth = PowerLaw(x_c=2e4, alpha=0.35, E=1.7)
    exact = fit_power_law(n, truth(n), irreducible=True)
    assert exact.E == pytest.approx(1.7, abs=1e-4) and exact.alpha == pytest.approx(0.35, abs=1e-3)
    fit = fit_power_law(n, noisy(truth(n), 0.002), irreducible=True)
    assert abs(fit.E - 1.7) < 0.1 and abs(fit.alpha - 0.35) < 0.06
    # A plain power law has E = 0 at best: the search does not invent an irreducible loss.
    plain = PowerLaw(x_c=1e6, alpha=0.1)
    assert fit_power_law(n, plain(n), irreducible=True).E == pytest.approx(0, abs=1e-3)


@pytest.mark.parametrize("x, loss, irreducible, message", [
    ([1, 2], [3, 2], True, "at least 3"),
    ([1, 2, 3], [3, 2], False, "same length"),
    ([1, -2, 3], [3, 2, 1], False, "finite numbers > 0"),
    ([1, 2, 3], [3, float("nan"), 1], False, "finite numbers > 0"),
    ([1, 2, 3], [1, 2, 3], False, "does not fall"),
])
def test_fit_power_law_refuses_bad_points(x, loss, irreducible, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, loss, irreducible=irreducible)


def test_fit_chinchilla_recovers_the_published_law():
    rng = np.random.default_rng(1)
    N = 10 ** rng.uniform(7, 10, 60)
    D = 10 ** rng.uniform(9, 12, 60)
    loss = noisy(CHINCHILLA(N, D), 0.002, seed=2)
    fit = fit_chinchilla(N, D, loss)
    assert abs(fit.alpha - 0.34) < 0.03 and abs(fit.beta - 0.28) < 0.03 and abs(fit.E - 1.69) < 0.05
    grid = np.array([(n, d) for n in (1e8, 1e9, 1e10) for d in (1e10, 1e11, 1e12)])
    assert np.max(np.abs(fit(grid[:, 0], grid[:, 1]) / CHINCHILLA(grid[:, 0], grid[:, 1]) - 1)) < 0.01
    with pytest.raises(ValueError, match="at least 5"):
        fit_chinchilla(N[:4], D[:4], loss[:4])
    with pytest.raises(ValueError, match="grid must have the keys"):
        fit_chinchilla(N, D, loss, grid={"alpha": [1.0]})


def test_chinchilla_frontier_is_the_minimum_at_fixed_compute():
    for C in (1e18, 5.76e23, 1e26):
        n_opt, d_opt = CHINCHILLA.optimal(C)
        assert training_flops(n_opt[0], d_opt[0]) == pytest.approx(C, rel=1e-12)
        # the loss along 6 N D = C, minimised numerically over log N
        best = minimize_scalar(lambda log_n, C=C: CHINCHILLA(math.exp(log_n), C / (6 * math.exp(log_n)))[0],
                               bounds=(math.log(1e3), math.log(C / 6 / 1e3)), method="bounded",
                               options={"xatol": 1e-10})
        assert math.exp(best.x) == pytest.approx(n_opt[0], rel=1e-4)
    # The exponents: N_opt grows as C^(beta / (alpha + beta)) = C^0.452 with the published constants.
    ratio = CHINCHILLA.optimal(1e24)[0][0] / CHINCHILLA.optimal(1e23)[0][0]
    assert ratio == pytest.approx(10 ** (0.28 / 0.62), rel=1e-12)
    equal = Chinchilla(E=1.0, A=400.0, B=400.0, alpha=0.3, beta=0.3)  # symmetric law: D_opt / N_opt = 1
    n, d = equal.optimal(6e20)
    assert n[0] == pytest.approx(1e10) and d[0] == pytest.approx(1e10)


def test_training_compute_in_closed_form_and_gpt3s_budget():
    assert training_flops(2.0, 3.0) == 36.0
    gpt3 = training_flops(174.6e9, 300e9)  # GPT-3 175B on 300B tokens: 3.14e23 FLOPs, 3.64e3 PF-days (Table D.1)
    assert f"{gpt3:.2e}" == "3.14e+23" and f"{pf_days(gpt3):.2e}" == "3.64e+03"
    assert PF_DAY == 8.64e19
    # Kaplan: 6N plus the attention scores over the context; PaLM counts their product with the values too:
    # for d_model = H Q its term, 12 L H Q T, is twice Kaplan's.
    assert kaplan_flops_per_token(1e6, 4, 128, 256) == 6e6 + 6 * 4 * 128 * 256
    assert palm_flops_per_token(1e6, 4, 8, 32, 128) == 6e6 + 12 * 4 * 8 * 32 * 128
    assert kaplan_optimal_params(1e3, 1.0, 1e9) == pytest.approx(1e9 * 1e3**0.73)
    for bad in (lambda: training_flops(0, 1), lambda: pf_days(float("inf")), lambda: kaplan_flops_per_token(1, 0, 1, 1),
                lambda: palm_flops_per_token(1, 1, 1, 1, -1), lambda: kaplan_optimal_params(1, 0, 1)):
        with pytest.raises(ValueError, match="must be a finite number"):
            bad()


def test_chinchilla_table_3_is_6nd_at_about_20_tokens_per_parameter():
    n, c, d = np.array(CHINCHILLA_TABLE_3).T
    # C = 6 N D to the rounding of the printed tokens (67B x 1.5T: 6.03e23 printed as 5.76e23, tokens 1.43T)
    assert np.all(np.abs(6 * n * d / c - 1) < 0.05)
    assert np.all((19.9 < d / n) & (d / n < 22.5))  # the "20 tokens per parameter"
    slope = np.polyfit(np.log(c), np.log(n), 1)[0]  # Approach 1: N_opt proportional to C^0.50
    assert slope == pytest.approx(0.50, abs=0.01)


def test_published_constants_do_not_reproduce_table_3_and_the_2024_refit_does():
    n, c, d = np.array(CHINCHILLA_TABLE_3).T
    n_pub, d_pub = CHINCHILLA.optimal(c)
    assert CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta) == pytest.approx(0.4516, abs=1e-4)
    assert np.all(d_pub / n_pub > 30)  # 34 tokens per parameter at 1.92e19 FLOPs, 244 at 1.3e28: not Table 3
    n_fit, d_fit = BESIROGLU_2024.optimal(c)
    assert np.all(np.abs(np.log(n_fit / n)) < 0.25)  # within 25% of the table's sizes
    assert np.all((14 < d_fit / n_fit) & (d_fit / n_fit < 25))


def test_kaplans_compute_efficient_size_at_one_pf_day():
    assert kaplan_optimal_params(PF_DAY) == pytest.approx(1.3e9)
    assert kaplan_optimal_params(10 * PF_DAY) / kaplan_optimal_params(PF_DAY) == pytest.approx(10**0.73)
