"""Tests of the DPO family and the reference-free losses in losses.py: DPO, cDPO, rDPO, IPO, hinge, SimPO,
ORPO and SFT: closed forms, reductions, gradients against the comments, stability.

The other loss tests, by concept: test_losses_distillation.py (distillation, e-DPO, p-DPO, DRDO),
test_losses_nca_to_kto.py (NCA, APO, SPPO, EXO, BCO, DiscoPOP, f-DPO, CPO, KTO), test_losses_registry.py
(every registered loss at once, and the registry), test_logps.py (sequence log-probs and WPO's weights).
Run: pytest -q test_losses*.py test_logps.py   (seconds, CPU only)

Conventions: values worked out by hand have the arithmetic in a comment above the assert; softplus(1) =
log(1 + e) = 1.313262, softplus(-1) = log(1 + 1/e) = 0.313262, log 2 = 0.693147. Gradient checks use float64.
"""
import math

import pytest
import torch

from losses import (LOSSES, cdpo_loss, dpo_loss, hinge_loss, ipo_loss, log1mexp, orpo_loss, rdpo_loss, sft_loss,
                    simpo_loss)
from loss_test_helpers import LN2, SP1, SPM1, grad_wrt, margin_inputs, t


# ------------------------------------------------------------------------------------------------------------
# DPO
# ------------------------------------------------------------------------------------------------------------
def test_dpo_closed_forms():
    # h = 0 -> softplus(0) = log 2, for every beta
    for beta in (0.01, 0.1, 1.0, 5.0):
        losses, _ = dpo_loss(*margin_inputs([0.0]), beta=beta)
        torch.testing.assert_close(losses, t(LN2))
    # beta = 0.1, h = 10 -> softplus(-1) = log(1 + e^-1) = 0.313262
    losses, _ = dpo_loss(*margin_inputs([10.0]), beta=0.1)
    torch.testing.assert_close(losses, t(0.313262), atol=1e-6, rtol=0)
    # beta = 0.1, h = -10 -> softplus(1) = 1.313262
    losses, _ = dpo_loss(*margin_inputs([-10.0]), beta=0.1)
    torch.testing.assert_close(losses, t(1.313262), atol=1e-6, rtol=0)


def test_dpo_policy_equals_reference_gives_log2_and_zero_rewards():
    logps = torch.randn(2, 6, dtype=torch.float64) * 30 - 50       # arbitrary summed log-probs
    losses, m = dpo_loss(logps[0], logps[1], logps[0].clone(), logps[1].clone(), beta=0.3)
    torch.testing.assert_close(losses, torch.full((6,), LN2, dtype=torch.float64))
    assert torch.all(m["chosen_rewards"] == 0) and torch.all(m["rejected_rewards"] == 0)


def test_dpo_swap_symmetry():
    # softplus(-u) - softplus(u) = -u, so loss(h) - loss(-h) = -beta * h exactly
    h = torch.linspace(-30, 30, 13, dtype=torch.float64)
    a, _ = dpo_loss(*margin_inputs(h), beta=0.2)
    b, _ = dpo_loss(*margin_inputs(-h), beta=0.2)
    torch.testing.assert_close(a - b, -0.2 * h)


def test_dpo_gradient_matches_comment():
    h = torch.linspace(-20, 20, 9, dtype=torch.float64)
    inputs = margin_inputs(h)
    g = grad_wrt(dpo_loss, inputs[0], *inputs, beta=0.1)
    torch.testing.assert_close(g, -0.1 * torch.sigmoid(-0.1 * h))


def test_dpo_reward_metrics():
    pc, pr, rc, rr = t(-10.0), t(-20.0), t(-12.0), t(-15.0)
    _, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # chosen = 0.5 * (-10 + 12) = 1; rejected = 0.5 * (-20 + 15) = -2.5; margin 3.5; accuracy 1
    torch.testing.assert_close(m["chosen_rewards"], t(1.0))
    torch.testing.assert_close(m["rejected_rewards"], t(-2.5))
    torch.testing.assert_close(m["margins"], t(3.5))
    torch.testing.assert_close(m["accuracies"], t(1.0))


def test_naive_dpo_overflows_but_ours_does_not():
    # beta * h = -1000: the loss is softplus(1000) = 1000. -log(sigmoid(-1000)) in float32 is inf.
    naive = -torch.log(torch.sigmoid(torch.tensor(-1000.0)))
    assert torch.isinf(naive)
    losses, _ = dpo_loss(*margin_inputs([-10000.0], dtype=torch.float32), beta=0.1)
    torch.testing.assert_close(losses, torch.tensor([1000.0]))


# ------------------------------------------------------------------------------------------------------------
# cDPO and rDPO
# ------------------------------------------------------------------------------------------------------------
def test_cdpo_and_rdpo_reduce_to_dpo_at_eps_zero():
    h = torch.randn(16, dtype=torch.float64) * 20
    base, _ = dpo_loss(*margin_inputs(h), beta=0.1)
    for fn in (cdpo_loss, rdpo_loss):
        got, _ = fn(*margin_inputs(h), beta=0.1, label_smoothing=0.0)
        torch.testing.assert_close(got, base)


def test_cdpo_closed_form_and_minimiser():
    # beta = 0.1, h = 10, eps = 0.1 -> 0.9 * softplus(-1) + 0.1 * softplus(1) = 0.281936 + 0.131326 = 0.413262
    losses, _ = cdpo_loss(*margin_inputs([10.0]), beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(losses, t(0.9 * SPM1 + 0.1 * SP1))
    torch.testing.assert_close(losses, t(0.413262), atol=1e-6, rtol=0)
    # minimiser beta * h* = log((1 - eps) / eps) = log 9 -> gradient exactly 0 there
    inputs = margin_inputs([math.log(9.0) / 0.1])
    g = grad_wrt(cdpo_loss, inputs[0], *inputs, beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(g, t(0.0))


def test_cdpo_gradient_matches_comment():
    h, beta, eps = torch.linspace(-30, 30, 11, dtype=torch.float64), 0.1, 0.2
    inputs = margin_inputs(h)
    g = grad_wrt(cdpo_loss, inputs[0], *inputs, beta=beta, label_smoothing=eps)
    expected = -beta * ((1 - eps) * torch.sigmoid(-beta * h) - eps * torch.sigmoid(beta * h))
    torch.testing.assert_close(g, expected)


def test_rdpo_closed_form_and_unbiasedness():
    # beta = 0.1, h = 10, eps = 0.1 -> (0.9 * 0.313262 - 0.1 * 1.313262) / 0.8 = 0.188262
    losses, _ = rdpo_loss(*margin_inputs([10.0]), beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(losses, t(0.188262), atol=1e-6, rtol=0)
    # averaged over the label noise, rDPO equals clean DPO: (1-eps) loss(h) + eps loss(-h) = dpo(h)
    h, eps = torch.randn(32, dtype=torch.float64) * 15, 0.3
    keep, _ = rdpo_loss(*margin_inputs(h), beta=0.1, label_smoothing=eps)
    flip, _ = rdpo_loss(*margin_inputs(-h), beta=0.1, label_smoothing=eps)
    clean, _ = dpo_loss(*margin_inputs(h), beta=0.1)
    torch.testing.assert_close((1 - eps) * keep + eps * flip, clean)


def test_rdpo_gradient_matches_comment():
    h, beta, eps = torch.linspace(-30, 30, 11, dtype=torch.float64), 0.1, 0.2
    inputs = margin_inputs(h)
    g = grad_wrt(rdpo_loss, inputs[0], *inputs, beta=beta, label_smoothing=eps)
    expected = -beta * ((1 - eps) * torch.sigmoid(-beta * h) + eps * torch.sigmoid(beta * h)) / (1 - 2 * eps)
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("fn", [cdpo_loss, rdpo_loss])
def test_label_smoothing_out_of_range_is_a_clear_error(fn):
    with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 0.5\)"):
        fn(*margin_inputs([1.0]), label_smoothing=0.5)


# ------------------------------------------------------------------------------------------------------------
# IPO and hinge
# ------------------------------------------------------------------------------------------------------------
def test_ipo_closed_forms_and_gradient():
    # beta = 0.1 -> target 1/(2 * 0.1) = 5: loss 0 at h = 5, (0 - 5)^2 = 25 at h = 0
    losses, _ = ipo_loss(*margin_inputs([5.0, 0.0]), beta=0.1)
    torch.testing.assert_close(losses, t(0.0, 25.0))
    h = torch.linspace(-10, 10, 7, dtype=torch.float64)
    inputs = margin_inputs(h)
    torch.testing.assert_close(grad_wrt(ipo_loss, inputs[0], *inputs, beta=0.1), 2 * (h - 5.0))


def test_ipo_is_fed_averaged_logps_by_the_registry():
    assert LOSSES["ipo"].average_logps is True


def test_hinge_closed_forms_and_gradient():
    # h = 0 -> 1;  beta = 0.1, h = 5 -> 1 - 0.5 = 0.5;  h = 20 -> relu(-1) = 0
    losses, _ = hinge_loss(*margin_inputs([0.0, 5.0, 20.0]), beta=0.1)
    torch.testing.assert_close(losses, t(1.0, 0.5, 0.0))
    inputs = margin_inputs([0.0, 5.0, 20.0])
    torch.testing.assert_close(grad_wrt(hinge_loss, inputs[0], *inputs, beta=0.1), t(-0.1, -0.1, 0.0))


# ------------------------------------------------------------------------------------------------------------
# SimPO and ORPO
# ------------------------------------------------------------------------------------------------------------
def test_simpo_closed_forms():
    # equal averaged log-probs -> u = -gamma -> softplus(gamma); gamma = 1: 1.313262
    losses, m = simpo_loss(t(-1.0), t(-1.0), beta=2.0, gamma=1.0)
    torch.testing.assert_close(losses, t(SP1))
    # beta = 2, gamma = 1, gap 0.5 -> u = 2 * 0.5 - 1 = 0 -> log 2; rewards 2 * Sbar
    losses, m = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=1.0)
    torch.testing.assert_close(losses, t(LN2))
    torch.testing.assert_close(m["chosen_rewards"], t(-1.0))
    torch.testing.assert_close(m["rejected_rewards"], t(-2.0))


def test_simpo_gradient_matches_comment():
    sw, sl = torch.rand(8, dtype=torch.float64) * -3, torch.rand(8, dtype=torch.float64) * -3
    sw.requires_grad_(True)
    sl.requires_grad_(True)
    losses, _ = simpo_loss(sw, sl, beta=2.5, gamma=1.2)
    gw, gl = torch.autograd.grad(losses.sum(), (sw, sl))
    u = 2.5 * (sw - sl).detach() - 1.2
    torch.testing.assert_close(gw, -2.5 * torch.sigmoid(-u))
    torch.testing.assert_close(gl, 2.5 * torch.sigmoid(-u))


def test_orpo_closed_form():
    # Sbar_w = Sbar_l = log 0.5 -> odds 1 each, v = 0 -> loss = -log 0.5 + beta * log 2 = (1 + beta) log 2
    s = math.log(0.5)
    losses, m = orpo_loss(t(s), t(s), beta=0.1)
    torch.testing.assert_close(losses, t(1.1 * LN2))
    torch.testing.assert_close(m["log_odds_ratio"], t(0.0))
    # Sbar_w = log 0.8 (odds 4), Sbar_l = log 0.2 (odds 1/4): v = log 16; loss = -log 0.8 + beta * softplus(-log 16)
    losses, m = orpo_loss(t(math.log(0.8)), t(math.log(0.2)), beta=0.1)
    torch.testing.assert_close(m["log_odds_ratio"], t(math.log(16.0)))
    torch.testing.assert_close(losses, t(-math.log(0.8) + 0.1 * math.log1p(1 / 16)))


def test_orpo_gradient_matches_comment():
    sw = (torch.rand(8, dtype=torch.float64) * -3 - 0.01).requires_grad_(True)
    sl = torch.rand(8, dtype=torch.float64) * -3 - 0.01
    losses, _ = orpo_loss(sw, sl, beta=0.3)
    (g,) = torch.autograd.grad(losses.sum(), sw)
    s, q = sw.detach(), sl
    v = (s - torch.log1p(-torch.exp(s))) - (q - torch.log1p(-torch.exp(q)))
    torch.testing.assert_close(g, -1 - 0.3 * torch.sigmoid(-v) / (1 - torch.exp(s)))


def test_log1mexp_matches_naive_in_float64_and_stays_finite():
    s = -torch.logspace(-5, 3, 50, dtype=torch.float64)
    torch.testing.assert_close(log1mexp(s), torch.log(1 - torch.exp(s)))
    # in float32 the naive form loses everything near 0 (1 - exp(-1e-7) rounds to 0 -> -inf)
    assert torch.isinf(torch.log(1 - torch.exp(torch.tensor(-1e-8))))
    assert torch.isfinite(log1mexp(torch.tensor([-1e-8, 0.0, -1000.0]))).all()


def test_sft_closed_form_and_gradient():
    # loss = -Sbar(y_w): Sbar = (-0.5, -2.0) -> (0.5, 2.0); d loss / d Sbar(y_w) = -1, d / d Sbar(y_l) = 0
    c, r = t(-0.5, -2.0, grad=True), t(-3.0, -1.0, grad=True)
    losses, metrics = sft_loss(c, r)
    torch.testing.assert_close(losses, t(0.5, 2.0))
    gc, gr = torch.autograd.grad(losses.sum(), (c, r), allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(gc, t(-1.0, -1.0))
    torch.testing.assert_close(gr, t(0.0, 0.0))
    # rewards are the policy's own likelihoods: pair 1 ranks y_w above y_l (-0.5 > -3), pair 2 does not
    assert metrics["accuracies"].tolist() == [1.0, 0.0]
