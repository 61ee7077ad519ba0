"""Tests of every formula written in losses.py: closed forms, reductions, gradients, stability, no leaks.

Run: pytest -q test_losses.py   (a few seconds, CPU only)

Conventions: values worked out by hand have the arithmetic in a comment above the assert; softplus(1) =
log(1 + e) = 1.313262, softplus(-1) = log(1 + 1/e) = 0.313262, log 2 = 0.693147. Gradient checks use float64.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import losses as L
from losses import (LOSSES, apo_down_loss, apo_zero_loss, bco_pair_loss, cdpo_loss, cpo_loss, discopop_loss,
                    distill_loss, dpo_loss, drdo_loss, edpo_loss, exo_loss, fdpo_loss, focal_preference_loss,
                    hinge_loss, ipo_loss, kto_loss, log1mexp, nca_loss, oracle_loss, orpo_loss, pdpo_loss,
                    rdpo_loss, sequence_logps, sft_loss, simpo_loss, sppo_hard_loss)

LN2 = math.log(2.0)
SP1, SPM1 = math.log1p(math.e), math.log1p(math.exp(-1.0))   # softplus(1), softplus(-1)
REF_LOSSES = [dpo_loss, cdpo_loss, rdpo_loss, ipo_loss, hinge_loss, pdpo_loss]   # take the same four inputs


def t(*values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def margin_inputs(h, dtype=torch.float64):
    """Four log-prob tensors whose pair margin is exactly h (policy_chosen carries it); leaf = policy_chosen."""
    h = torch.as_tensor(h, dtype=dtype).reshape(-1)
    pc = h.clone().requires_grad_(True)
    zeros = torch.zeros_like(h)
    return pc, zeros.clone(), zeros.clone(), zeros.clone()


def grad_wrt(loss_fn, leaf, *args, **kw):
    losses, _ = loss_fn(*args, **kw)
    (g,) = torch.autograd.grad(losses.sum(), leaf)
    return g


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


# ------------------------------------------------------------------------------------------------------------
# Distillation, e-DPO, p-DPO
# ------------------------------------------------------------------------------------------------------------
def test_distill_closed_forms_and_gradient():
    # beta * h = dR -> 0;  dR = 1, h = 0 -> 1
    pc, pr, rc, rr = margin_inputs([20.0, 0.0])
    losses, m = distill_loss(pc, pr, rc, rr, t(3.0, 1.0), t(1.0, 0.0), beta=0.1)
    torch.testing.assert_close(losses, t(0.0, 1.0))
    torch.testing.assert_close(m["oracle_margin"], t(2.0, 1.0))
    h, dR = torch.randn(10, dtype=torch.float64) * 10, torch.randn(10, dtype=torch.float64)
    inputs = margin_inputs(h)
    g = grad_wrt(distill_loss, inputs[0], *inputs, dR, torch.zeros_like(dR), beta=0.2)
    torch.testing.assert_close(g, -2 * 0.2 * (dR - 0.2 * h))


def test_edpo_reduces_to_distill_with_one_member_and_no_kl():
    h, Rw, Rl = (torch.randn(10, dtype=torch.float64) for _ in range(3))
    base, _ = distill_loss(*margin_inputs(h), Rw, Rl, beta=0.1)
    for aggregate in ("batch_min", "example_min", "mean"):
        got, _ = edpo_loss(*margin_inputs(h), Rw[None], Rl[None], beta=0.1, kl_coef=0.0, aggregate=aggregate)
        torch.testing.assert_close(got, base)


def test_edpo_aggregates():
    # two pairs with h = 0 (beta * h = 0), so member k's per-pair loss is dR_k^2.
    # member 0 margins (1, 3) -> losses (1, 9), mean 5; member 1 margins (2, 2) -> (4, 4), mean 4
    Rw = t([1.0, 3.0], [2.0, 2.0])
    Rl = torch.zeros(2, 2, dtype=torch.float64)
    batch_min, m = edpo_loss(*margin_inputs([0.0, 0.0]), Rw, Rl, kl_coef=0.0, aggregate="batch_min")
    torch.testing.assert_close(batch_min, t(4.0, 4.0))            # member 1 for both pairs
    torch.testing.assert_close(m["member"], t(1.0, 1.0))
    example_min, m = edpo_loss(*margin_inputs([0.0, 0.0]), Rw, Rl, kl_coef=0.0, aggregate="example_min")
    torch.testing.assert_close(example_min, t(1.0, 4.0))          # member 0 on pair 0, member 1 on pair 1
    torch.testing.assert_close(m["oracle_margin"], t(1.0, 2.0))
    mean, _ = edpo_loss(*margin_inputs([0.0, 0.0]), Rw, Rl, kl_coef=0.0, aggregate="mean")
    torch.testing.assert_close(mean, t(2.5, 6.5))                 # (1 + 4) / 2, (9 + 4) / 2


def test_edpo_member_keyword_fixes_the_member_and_member_losses_are_each_members_loss():
    # The same two pairs as above (h = 0, member k's losses dR_k^2: member 0 (1, 9), member 1 (4, 4)).
    # member=0 forces member 0 on both pairs although member 1 is the argmin over these two pairs: a caller that
    # chose member 0 on a larger batch (train.py's optimizer batch) gets exactly member 0's losses.
    Rw, Rl = t([1.0, 3.0], [2.0, 2.0]), torch.zeros(2, 2, dtype=torch.float64)
    forced, m = edpo_loss(*margin_inputs([0.0, 0.0]), Rw, Rl, kl_coef=0.0, aggregate="batch_min", member=0)
    torch.testing.assert_close(forced, t(1.0, 9.0))
    torch.testing.assert_close(m["member"], t(0.0, 0.0))
    torch.testing.assert_close(m["oracle_margin"], t(1.0, 3.0))
    # member_losses (B, K): row = pair, column = member, (dR_k - beta h)^2 = dR_k^2 here
    torch.testing.assert_close(m["member_losses"], t([1.0, 4.0], [9.0, 4.0]))
    # the gradient flows through the forced member: random inputs, K = 3, member 2 -> -2 beta (dR_2 - beta h)
    h = torch.randn(5, dtype=torch.float64) * 10
    Rw, Rl = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    inputs = margin_inputs(h)
    g = grad_wrt(edpo_loss, inputs[0], *inputs, Rw, Rl, beta=0.1, kl_coef=0.0, aggregate="batch_min", member=2)
    torch.testing.assert_close(g, -2 * 0.1 * ((Rw[2] - Rl[2]) - 0.1 * h))
    with pytest.raises(ValueError, match="member=1 applies to aggregate='batch_min'"):
        edpo_loss(*margin_inputs([0.0, 0.0]), Rw[:, :2], Rl[:, :2], aggregate="example_min", member=1)


def test_edpo_forward_kl_term_and_gradient():
    # KL estimate per pair = ((S_ref_w - S_w) + (S_ref_l - S_l)) / 2 = ((-5 + 3) + (-9 + 4)) / 2 = -3.5
    pc, pr, rc, rr = t(-3.0, grad=True), t(-4.0), t(-5.0), t(-9.0)
    losses, m = edpo_loss(pc, pr, rc, rr, t(0.0)[None], t(0.0)[None], beta=0.1, kl_coef=0.2)
    torch.testing.assert_close(m["forward_kl"], t(-3.5))
    # h = (-3 + 5) - (-4 + 9) = -3: distill = (0 - 0.1 * -3)^2 = 0.09; + 0.2 * -3.5 = -0.61
    torch.testing.assert_close(losses, t(0.09 - 0.7))
    # example_min gradient: -2 beta (dR - beta h) - kl_coef / 2, random inputs, K = 3
    h = torch.randn(6, dtype=torch.float64) * 10
    Rw, Rl = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    inputs = margin_inputs(h)
    g = grad_wrt(edpo_loss, inputs[0], *inputs, Rw, Rl, beta=0.1, kl_coef=0.3, aggregate="example_min")
    member_losses = ((Rw - Rl) - 0.1 * h) ** 2
    k = member_losses.argmin(0)
    dR = (Rw - Rl).gather(0, k[None])[0]
    torch.testing.assert_close(g, -2 * 0.1 * (dR - 0.1 * h) - 0.3 / 2)


def test_edpo_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="aggregate must be"):
        edpo_loss(*margin_inputs([0.0]), t(0.0)[None], t(0.0)[None], aggregate="max")
    with pytest.raises(ValueError, match=r"shape \(K, B\)"):
        edpo_loss(*margin_inputs([0.0, 1.0]), torch.zeros(2, 3), torch.zeros(2, 3))


def test_pdpo_reduces_to_dpo_and_gradient():
    h = torch.randn(10, dtype=torch.float64) * 10
    base, _ = dpo_loss(*margin_inputs(h), beta=0.1)
    got, _ = pdpo_loss(*margin_inputs(h), beta=0.1, kl_coef=0.0)
    torch.testing.assert_close(got, base)
    inputs = margin_inputs(h)
    g = grad_wrt(pdpo_loss, inputs[0], *inputs, beta=0.1, kl_coef=0.4)
    torch.testing.assert_close(g, -0.1 * torch.sigmoid(-0.1 * h) - 0.2)


# ------------------------------------------------------------------------------------------------------------
# DRDO: Oracle, focal term, student loss
# ------------------------------------------------------------------------------------------------------------
def test_oracle_loss_closed_form_and_gradient():
    # R_w = R_l, NLL = 2, alpha = 0.1 -> log 2 + 0.2 = 0.893147
    losses, m = oracle_loss(t(0.3), t(0.3), t(2.0), alpha=0.1)
    torch.testing.assert_close(losses, t(LN2 + 0.2))
    torch.testing.assert_close(m["bt_loss"], t(LN2))
    rw, rl, nll = (torch.randn(8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    losses, _ = oracle_loss(rw, rl, nll, alpha=0.05)
    gw, gl, gn = torch.autograd.grad(losses.sum(), (rw, rl, nll))
    torch.testing.assert_close(gw, -torch.sigmoid(-(rw - rl)).detach())
    torch.testing.assert_close(gl, torch.sigmoid(-(rw - rl)).detach())
    torch.testing.assert_close(gn, torch.full_like(gn, 0.05))


# The focal loss F_gamma(z) = -(1 - sigmoid(z))^gamma log sigmoid(z) and dF/dz, for gamma in {0, 0.5, 1, 2, 5} and
# z in {-4, -2, -1, 0, 1, 2, 4}, tabulated to 4 decimals from the closed forms (the curves of DRDO's Fig. 4)
FOCAL_Z = [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0]
FOCAL_LOSS = {
    0.0: [4.0181, 2.1269, 1.3133, 0.6931, 0.3133, 0.1269, 0.0181],
    0.5: [3.9819, 1.9961, 1.1229, 0.4901, 0.1625, 0.0438, 0.0024],
    1.0: [3.9459, 1.8734, 0.9601, 0.3466, 0.0842, 0.0151, 0.0003],
    2.0: [3.8749, 1.6501, 0.7019, 0.1733, 0.0227, 0.0018, 0.0000],
    5.0: [3.6696, 1.1275, 0.2742, 0.0217, 0.0004, 0.0000, 0.0000],
}
FOCAL_GRAD = {
    0.0: [-0.9820, -0.8808, -0.7311, -0.5000, -0.2689, -0.1192, -0.0180],
    0.5: [-1.0090, -0.9456, -0.7761, -0.4761, -0.1989, -0.0605, -0.0036],
    1.0: [-1.0353, -0.9991, -0.7926, -0.4233, -0.1339, -0.0275, -0.0006],
    2.0: [-1.0864, -1.0767, -0.7682, -0.2983, -0.0526, -0.0049, -0.0000],
    5.0: [-1.2268, -1.1390, -0.5214, -0.0698, -0.0020, -0.0000, -0.0000],
}


@pytest.mark.parametrize("gamma", sorted(FOCAL_LOSS))
def test_focal_table_from_paper_notes(gamma):
    z = t(*FOCAL_Z, grad=True)
    loss = focal_preference_loss(z, gamma=gamma)
    (g,) = torch.autograd.grad(loss.sum(), z)
    torch.testing.assert_close(loss, t(*FOCAL_LOSS[gamma]), atol=1e-4, rtol=0)   # table has 4 decimals
    torch.testing.assert_close(g, t(*FOCAL_GRAD[gamma]), atol=1e-4, rtol=0)


def test_focal_gradient_formula_and_gamma_zero():
    z = (torch.randn(50, dtype=torch.float64) * 4).requires_grad_(True)
    for gamma in (0.0, 0.7, 2.0, 3.5):
        (g,) = torch.autograd.grad(focal_preference_loss(z, gamma=gamma).sum(), z)
        p = torch.sigmoid(z.detach())
        torch.testing.assert_close(g, (1 - p) ** gamma * (gamma * p * torch.log(p) - (1 - p)))
    torch.testing.assert_close(focal_preference_loss(z, gamma=0.0), F.softplus(-z))


def test_focal_is_stable_at_plus_minus_1000():
    z = torch.tensor([-1000.0, -50.0, 0.0, 50.0, 1000.0], requires_grad=True)
    for gamma in (0.0, 2.0, 5.0):
        loss = focal_preference_loss(z, gamma=gamma)
        (g,) = torch.autograd.grad(loss.sum(), z)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        # z = -1000: (1-p)^gamma = 1 and -log p = 1000; dF/dz -> -(1 - p) = -1 (the bracket at p = 0)
        torch.testing.assert_close(loss[0], torch.tensor(1000.0))
        torch.testing.assert_close(g[0], torch.tensor(-1.0))
        assert loss[-1] == 0.0


def test_drdo_alpha_zero_is_pure_reward_regression():
    rw, rl, Rw, Rl = (torch.randn(8, dtype=torch.float64) for _ in range(4))
    sw, sl = -torch.rand(8, dtype=torch.float64) - 0.1, -torch.rand(8, dtype=torch.float64) - 0.1
    losses, m = drdo_loss(rw, rl, Rw, Rl, sw, sl, alpha=0.0, gamma=2.0)
    torch.testing.assert_close(losses, ((Rw - Rl) - (rw - rl)) ** 2)
    torch.testing.assert_close(m["distill_loss"], losses)
    # student gap equal to the Oracle gap and alpha = 0 -> exactly 0
    losses, _ = drdo_loss(rw, rl, rw + 1.0, rl + 1.0, sw, sl, alpha=0.0)
    torch.testing.assert_close(losses, torch.zeros(8, dtype=torch.float64))


def test_drdo_distill_weight_zero_is_the_focal_term_alone():
    rw, rl, Rw, Rl = (torch.randn(8, dtype=torch.float64) for _ in range(4))
    sw, sl = -torch.rand(8, dtype=torch.float64) - 0.1, -torch.rand(8, dtype=torch.float64) - 0.1
    losses, m = drdo_loss(rw, rl, Rw, Rl, sw, sl, alpha=0.7, gamma=2.0, distill_weight=0.0)
    torch.testing.assert_close(losses, 0.7 * focal_preference_loss(m["pref_logit"], gamma=2.0))
    both, _ = drdo_loss(rw, rl, Rw, Rl, sw, sl, alpha=0.7, gamma=2.0, distill_weight=0.5)
    torch.testing.assert_close(both, 0.5 * m["distill_loss"] + losses)


@pytest.mark.parametrize("student", ["implicit-sum", "implicit-mean"])
def test_drdo_full_gradient_with_the_implicit_reward_matches_comment(student):
    # r = beta_r * S (sum) or beta_r * Sbar (mean), Sbar = S / |y|, z from Sbar (unlikelihood). Autograd on the
    # summed log-probs S must equal the bracketed coefficients of the comment's "full gradient" (g(y) = dS/dS = 1).
    g = torch.Generator().manual_seed(5)
    B = 6
    S_w = (-torch.rand(B, generator=g, dtype=torch.float64) * 40 - 2).requires_grad_(True)
    S_l = (-torch.rand(B, generator=g, dtype=torch.float64) * 40 - 2).requires_grad_(True)
    n_w = torch.randint(3, 30, (B,), generator=g).double()
    n_l = torch.randint(3, 30, (B,), generator=g).double()
    Rw, Rl = torch.randn(B, generator=g, dtype=torch.float64), torch.randn(B, generator=g, dtype=torch.float64)
    beta_r, alpha, gamma, lam = 0.3, 0.8, 2.0, 1.5
    Sb_w, Sb_l = S_w / n_w, S_l / n_l
    r_w, r_l = (beta_r * S_w, beta_r * S_l) if student == "implicit-sum" else (beta_r * Sb_w, beta_r * Sb_l)
    losses, m = drdo_loss(r_w, r_l, Rw, Rl, Sb_w, Sb_l, alpha=alpha, gamma=gamma, distill_weight=lam)
    gw, gl = torch.autograd.grad(losses.sum(), (S_w, S_l))
    resid = ((Rw - Rl) - (r_w - r_l)).detach()                                   # dR - dr
    z = m["pref_logit"]
    p = torch.sigmoid(z)
    dF = (1 - p) ** gamma * (gamma * p * torch.log(p) - (1 - p))                 # F'_gamma(z)
    pb_w, pb_l = torch.exp(Sb_w.detach()), torch.exp(Sb_l.detach())
    dz_w, dz_l = pb_w / (1 - pb_w), -pb_l / (1 - pb_l)                           # unlikelihood: dz/dSbar
    per = (lambda n: 1.0) if student == "implicit-sum" else (lambda n: 1.0 / n)  # distillation's 1/|y| (mean)
    expected_w = -2 * lam * beta_r * resid * per(n_w) + alpha * dF * dz_w / n_w
    expected_l = +2 * lam * beta_r * resid * per(n_l) + alpha * dF * dz_l / n_l
    torch.testing.assert_close(gw, expected_w)
    torch.testing.assert_close(gl, expected_l)


def test_unlikelihood_pass_through_factor_values_in_the_comment():
    # dz/dSbar_w = pbar / (1 - pbar), pbar = exp(Sbar): the four values quoted above drdo_loss
    z_of = lambda s_w: log1mexp(torch.tensor([-3.0], dtype=torch.float64)) - log1mexp(s_w)   # the score's form
    for sbar, quoted in [(-5.0, 0.0068), (-2.0, 0.157), (-1.0, 0.582), (-0.5, 1.54)]:
        s_w = torch.tensor([sbar], dtype=torch.float64, requires_grad=True)
        (d,) = torch.autograd.grad(z_of(s_w).sum(), s_w)
        assert d.item() == pytest.approx(quoted, abs=0.0051 if quoted > 1 else 0.00051), (sbar, d.item())


def test_drdo_closed_form():
    # dR = 2, dr = 1 -> (2 - 1)^2 = 1. Sbar_w = log 0.5, Sbar_l = log 0.75:
    # unlikelihood z = log(1 - 0.75) - log(1 - 0.5) = log(0.25 / 0.5) = -log 2
    # gamma = 0 -> focal = softplus(log 2) = log 3 ; alpha = 0.5 -> loss = 1 + 0.5 log 3
    losses, m = drdo_loss(t(1.0), t(0.0), t(3.0), t(1.0), t(math.log(0.5)), t(math.log(0.75)),
                          alpha=0.5, gamma=0.0, score="unlikelihood")
    torch.testing.assert_close(m["pref_logit"], t(-LN2))
    torch.testing.assert_close(losses, t(1.0 + 0.5 * math.log(3.0)))
    torch.testing.assert_close(m["oracle_margin"], t(2.0))
    torch.testing.assert_close(m["student_margin"], t(1.0))
    # focal weight (1 - p)^gamma at gamma = 2, z = -log 2: p = 1/3, (2/3)^2 = 4/9
    _, m = drdo_loss(t(1.0), t(0.0), t(3.0), t(1.0), t(math.log(0.5)), t(math.log(0.75)), gamma=2.0)
    torch.testing.assert_close(m["focal_weight"], t(4.0 / 9.0))


def test_drdo_scores_odds_is_likelihood_plus_unlikelihood():
    sw, sl = -torch.rand(8, dtype=torch.float64) * 3 - 0.01, -torch.rand(8, dtype=torch.float64) * 3 - 0.01
    zero = torch.zeros(8, dtype=torch.float64)
    z = {s: drdo_loss(zero, zero, zero, zero, sw, sl, score=s)[1]["pref_logit"]
         for s in ("unlikelihood", "likelihood", "odds")}
    torch.testing.assert_close(z["likelihood"], sw - sl)
    torch.testing.assert_close(z["odds"], z["likelihood"] + z["unlikelihood"])


@pytest.mark.parametrize("score", ["unlikelihood", "likelihood", "odds"])
def test_drdo_gradients_match_comment(score):
    B, alpha, gamma = 8, 0.7, 2.0
    rw, rl = torch.randn(B, dtype=torch.float64, requires_grad=True), torch.randn(B, dtype=torch.float64)
    Rw, Rl = torch.randn(B, dtype=torch.float64), torch.randn(B, dtype=torch.float64)
    sw = (-torch.rand(B, dtype=torch.float64) * 3 - 0.01).requires_grad_(True)
    sl = -torch.rand(B, dtype=torch.float64) * 3 - 0.01
    losses, m = drdo_loss(rw, rl, Rw, Rl, sw, sl, alpha=alpha, gamma=gamma, score=score)
    g_r, g_s = torch.autograd.grad(losses.sum(), (rw, sw))
    torch.testing.assert_close(g_r, -2 * ((Rw - Rl) - (rw - rl)).detach())
    p, s = torch.sigmoid(m["pref_logit"]), sw.detach()
    dF = (1 - p) ** gamma * (gamma * p * torch.log(p) - (1 - p))
    dz = {"unlikelihood": torch.exp(s) / (1 - torch.exp(s)), "likelihood": torch.ones_like(s),
          "odds": 1 / (1 - torch.exp(s))}[score]
    torch.testing.assert_close(g_s, alpha * dF * dz)


def test_drdo_bad_score_is_a_clear_error():
    zero = torch.zeros(2)
    with pytest.raises(ValueError, match="score must be"):
        drdo_loss(zero, zero, zero, zero, zero - 1, zero - 1, score="logodds")


# ------------------------------------------------------------------------------------------------------------
# NCA, APO, SPPO, EXO, BCO, DiscoPOP, f-DPO, CPO, KTO
# ------------------------------------------------------------------------------------------------------------
def pair_inputs(rho_w, rho_l, dtype=torch.float64):
    """Four log-prob tensors with rho(y_w) = rho_w, rho(y_l) = rho_l (reference 0); leaves = the policy's two."""
    pc = torch.as_tensor(rho_w, dtype=dtype).reshape(-1).clone().requires_grad_(True)
    pr = torch.as_tensor(rho_l, dtype=dtype).reshape(-1).clone().requires_grad_(True)
    return pc, pr, torch.zeros_like(pc.detach()), torch.zeros_like(pr.detach())


def grads(loss_fn, *args, **kw):
    """d sum(losses) / d (policy_chosen, policy_rejected)."""
    losses, _ = loss_fn(*args, **kw)
    return torch.autograd.grad(losses.sum(), args[:2], allow_unused=True, materialize_grads=True)


def random_rhos(n=12, scale=30.0, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale,
            torch.randn(n, generator=g, dtype=torch.float64) * scale)


def sprime(u):
    return torch.sigmoid(u) * torch.sigmoid(-u)


def test_nca_closed_forms_and_optimum():
    # pi = pi_ref: softplus(0) * (1 + 1/2 + 1/2) = 2 log 2
    losses, m = nca_loss(*pair_inputs([0.0], [0.0]), beta=0.3)
    torch.testing.assert_close(losses, t(2 * LN2))
    # beta = 0.1, rho_w = 10, rho_l = -10: softplus(-1) + softplus(1)/2 + softplus(-1)/2 = 1.126524
    losses, m = nca_loss(*pair_inputs([10.0], [-10.0]), beta=0.1)
    torch.testing.assert_close(losses, t(SPM1 + SP1 / 2 + SPM1 / 2))
    torch.testing.assert_close(losses, t(1.126524), atol=1e-6, rtol=0)
    torch.testing.assert_close(m["chosen_rewards"], t(1.0))
    # the y_w part is minimised at beta * rho_w = log 2 (gradient 0 there); with y_l far below, the value is
    # softplus(-log 2) + softplus(log 2) / 2 = log(3/2) + log(3)/2 = 0.954771
    inputs = pair_inputs([math.log(2.0) / 0.1], [-1e4])
    gw, gl = grads(nca_loss, *inputs, beta=0.1)
    torch.testing.assert_close(gw, t(0.0))
    torch.testing.assert_close(nca_loss(*inputs, beta=0.1)[0], t(math.log(1.5) + math.log(3.0) / 2))
    # not a function of h alone (unlike DPO): h = 10 from (10, 0) and from (0, -10) give different losses
    a, _ = nca_loss(*pair_inputs([10.0], [0.0]))
    b, _ = nca_loss(*pair_inputs([0.0], [-10.0]))
    assert abs(a.item() - b.item()) > 0.1


def test_nca_gradient_matches_comment():
    rw, rl = random_rhos()
    gw, gl = grads(nca_loss, *pair_inputs(rw, rl), beta=0.1)
    torch.testing.assert_close(gw, 0.1 * (torch.sigmoid(0.1 * rw) / 2 - torch.sigmoid(-0.1 * rw)))
    torch.testing.assert_close(gl, 0.1 * torch.sigmoid(0.1 * rl) / 2)


def test_apo_closed_forms_and_trl_offset():
    # both are 0 at pi = pi_ref: -1/2 + 1/2 and 1/2 - 1/2
    for fn in (apo_zero_loss, apo_down_loss):
        torch.testing.assert_close(fn(*pair_inputs([0.0], [0.0]))[0], t(0.0))
    # beta = 0.1, rho_w = 10, rho_l = -10: zero -> sigmoid(-1) - sigmoid(1) = 0.268941 - 0.731059 = -0.462117
    #                                      down -> sigmoid(1) - sigmoid(2) = 0.731059 - 0.880797 = -0.149738
    zero, _ = apo_zero_loss(*pair_inputs([10.0], [-10.0]), beta=0.1)
    down, _ = apo_down_loss(*pair_inputs([10.0], [-10.0]), beta=0.1)
    torch.testing.assert_close(zero, t(-0.462117), atol=1e-6, rtol=0)
    torch.testing.assert_close(down, t(-0.149738), atol=1e-6, rtol=0)
    # TRL's forms carry an extra constant 1 (README deviation 15): ours + 1 equals them on random inputs
    rw, rl = random_rhos()
    sig = torch.sigmoid
    zero, _ = apo_zero_loss(*pair_inputs(rw, rl), beta=0.2)
    down, _ = apo_down_loss(*pair_inputs(rw, rl), beta=0.2)
    torch.testing.assert_close(zero + 1, (1 - sig(0.2 * rw)) + sig(0.2 * rl))
    torch.testing.assert_close(down + 1, sig(0.2 * rw) + (1 - sig(0.2 * (rw - rl))))
    assert (zero.abs() < 1).all() and (down.abs() < 1).all()


def test_apo_gradients_match_comment():
    rw, rl = random_rhos(scale=15.0)
    b = 0.1
    gw, gl = grads(apo_zero_loss, *pair_inputs(rw, rl), beta=b)
    torch.testing.assert_close(gw, -b * sprime(b * rw))
    torch.testing.assert_close(gl, b * sprime(b * rl))
    gw, gl = grads(apo_down_loss, *pair_inputs(rw, rl), beta=b)
    torch.testing.assert_close(gw, b * (sprime(b * rw) - sprime(b * (rw - rl))))
    torch.testing.assert_close(gl, b * sprime(b * (rw - rl)))
    # at pi = pi_ref: APO-down leaves rho_w alone (1/4 - 1/4) and pushes rho_l down at rate beta/4
    gw, gl = grads(apo_down_loss, *pair_inputs([0.0], [0.0]), beta=b)
    torch.testing.assert_close(gw, t(0.0))
    torch.testing.assert_close(gl, t(b / 4))


def test_sppo_hard_closed_forms_optimum_and_identity():
    # beta = 0.1: targets +-1/(2 beta) = +-5; at pi = pi_ref (0 - 5)^2 + (0 + 5)^2 = 50; 0 at the targets
    losses, _ = sppo_hard_loss(*pair_inputs([0.0, 5.0], [0.0, -5.0]), beta=0.1)
    torch.testing.assert_close(losses, t(50.0, 0.0))
    # the optimum is exactly at rho_w = +1/(2 beta), rho_l = -1/(2 beta): both gradients 0 there, for any beta
    for beta in (0.05, 0.1, 0.5):
        gw, gl = grads(sppo_hard_loss, *pair_inputs([0.5 / beta], [-0.5 / beta]), beta=beta)
        torch.testing.assert_close(gw, t(0.0))
        torch.testing.assert_close(gl, t(0.0))
    # identity: (h - 1/beta)^2 / 2 + (rho_w + rho_l)^2 / 2; and the gradient of the comment
    rw, rl = random_rhos()
    losses, _ = sppo_hard_loss(*pair_inputs(rw, rl), beta=0.2)
    torch.testing.assert_close(losses, ((rw - rl) - 5.0) ** 2 / 2 + (rw + rl) ** 2 / 2)
    gw, gl = grads(sppo_hard_loss, *pair_inputs(rw, rl), beta=0.2)
    torch.testing.assert_close(gw, 2 * (rw - 2.5))
    torch.testing.assert_close(gl, 2 * (rl + 2.5))


def test_exo_closed_forms_minimiser_and_relation_to_cdpo():
    eps = 1e-3
    # h = 0: p = 1/2 -> 1/2 log(1/2 / (1 - eps)) + 1/2 log(1/2 / eps) = -log 2 - log(eps (1 - eps)) / 2 = 2.761231
    losses, _ = exo_loss(*margin_inputs([0.0]), beta=0.1, epsilon=eps)
    torch.testing.assert_close(losses, t(-LN2 - math.log(eps * (1 - eps)) / 2))
    torch.testing.assert_close(losses, t(2.761231), atol=1e-6, rtol=0)
    # minimiser u* = log((1 - eps) / eps) = log 999 = 6.906755: loss 0 and gradient 0
    inputs = margin_inputs([math.log((1 - eps) / eps) / 0.1])
    torch.testing.assert_close(exo_loss(*inputs, beta=0.1, epsilon=eps)[0], t(0.0))
    torch.testing.assert_close(grad_wrt(exo_loss, inputs[0], *inputs, beta=0.1, epsilon=eps), t(0.0))
    # EXO = KL(p || q), cDPO = KL(q || p) + H(q) for q = (1 - eps, eps), p = (sigmoid(u), sigmoid(-u))
    e, h = 0.1, torch.linspace(-40, 40, 9, dtype=torch.float64)
    p, q = torch.sigmoid(0.1 * h), 1 - e
    kl_pq = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / e)
    kl_qp = q * torch.log(q / p) + e * torch.log(e / (1 - p))
    entropy = -(q * math.log(q) + e * math.log(e))
    torch.testing.assert_close(exo_loss(*margin_inputs(h), beta=0.1, epsilon=e)[0], kl_pq)
    torch.testing.assert_close(cdpo_loss(*margin_inputs(h), beta=0.1, label_smoothing=e)[0], kl_qp + entropy)


def test_exo_gradient_matches_comment_and_bad_epsilon():
    h, eps = torch.linspace(-60, 60, 13, dtype=torch.float64), 0.01
    inputs = margin_inputs(h)
    g = grad_wrt(exo_loss, inputs[0], *inputs, beta=0.1, epsilon=eps)
    u = 0.1 * h
    torch.testing.assert_close(g, 0.1 * sprime(u) * (u - math.log((1 - eps) / eps)))
    for bad in (0.0, 0.5, -0.1):
        with pytest.raises(ValueError, match=r"epsilon .*\(0, 0.5\)"):
            exo_loss(*margin_inputs([1.0]), epsilon=bad)


def test_bco_closed_forms_bound_and_midpoint():
    # pi = pi_ref, delta = 0: 2 softplus(0) = 2 log 2
    # beta = 0.1, rho_w = 10, rho_l = -10, delta = 0: 2 softplus(-1) = 0.626523
    torch.testing.assert_close(bco_pair_loss(*pair_inputs([0.0], [0.0]))[0], t(2 * LN2))
    losses, m = bco_pair_loss(*pair_inputs([10.0], [-10.0]), beta=0.1, delta=0.0)
    torch.testing.assert_close(losses, t(0.626523), atol=1e-6, rtol=0)
    # metrics: reward_mean = (r_w + r_l) / 2 = (1 - 1) / 2 = 0; reward_shift = delta per pair
    torch.testing.assert_close(m["reward_mean"], t(0.0))
    _, m = bco_pair_loss(*pair_inputs([10.0, 4.0], [2.0, 0.0]), beta=0.5, delta=0.25)
    torch.testing.assert_close(m["reward_mean"], t(3.0, 1.0))        # (5 + 1) / 2, (2 + 0) / 2
    torch.testing.assert_close(m["reward_shift"], t(0.25, 0.25))
    # an upper bound of DPO for every delta: sigmoid(a) sigmoid(b) <= sigmoid(a + b)
    rw, rl = random_rhos(n=20)
    dpo, _ = dpo_loss(*pair_inputs(rw, rl), beta=0.1)
    for delta in (-3.0, -0.5, 0.0, 0.7, 4.0):
        bco, _ = bco_pair_loss(*pair_inputs(rw, rl), beta=0.1, delta=delta)
        assert (bco >= dpo - 1e-12).all()
    # delta at each pair's own midpoint (r_w + r_l)/2 -> 2 softplus(-beta h / 2)
    mid = 0.1 * (rw + rl) / 2
    bco, _ = bco_pair_loss(*pair_inputs(rw, rl), beta=0.1, delta=mid)
    torch.testing.assert_close(bco, 2 * F.softplus(-0.1 * (rw - rl) / 2))


def test_bco_gradient_matches_comment_and_delta_is_a_constant():
    rw, rl = random_rhos(scale=20.0)
    delta = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    pc, pr, rc, rr = pair_inputs(rw, rl)
    losses, _ = bco_pair_loss(pc, pr, rc, rr, beta=0.1, delta=delta)
    gw, gl = torch.autograd.grad(losses.sum(), (pc, pr))
    torch.testing.assert_close(gw, -0.1 * torch.sigmoid(0.4 - 0.1 * rw))
    torch.testing.assert_close(gl, 0.1 * torch.sigmoid(0.1 * rl - 0.4))
    (g_delta,) = torch.autograd.grad(bco_pair_loss(pc, pr, rc, rr, delta=delta)[0].sum(), delta, allow_unused=True)
    assert g_delta is None                                             # delta is detached inside


def test_discopop_closed_forms_and_gradient():
    # h = 0: m = 1/2 -> (softplus(0) + exp(0)) / 2 = (log 2 + 1) / 2 = 0.846574
    losses, m = discopop_loss(*margin_inputs([0.0]), beta=0.1, tau=0.05)
    torch.testing.assert_close(losses, t((LN2 + 1) / 2))
    torch.testing.assert_close(m["modulation"], t(0.5))
    # d loss / d u at 0 = m (1-m) / tau * (1 - log 2) - (1/2)(1/2) - 1/2 = 5 (1 - log 2) - 3/4 = +0.784264;
    # d / d h = beta * that = +0.0784264: positive, so gradient descent first LOWERS h (the paper's non-convexity)
    inputs = margin_inputs([0.0])
    g = grad_wrt(discopop_loss, inputs[0], *inputs, beta=0.1, tau=0.05)
    torch.testing.assert_close(g, t(0.1 * (5 * (1 - LN2) - 0.75)))
    torch.testing.assert_close(g, t(0.0784264), atol=1e-7, rtol=0)
    # the shallow local minimum at u ~ -0.119 and local maximum at u ~ +0.072 (tau = 0.05), as in the comment
    values, _ = discopop_loss(*margin_inputs([-1.19, 0.0, 0.72]), beta=0.1)
    torch.testing.assert_close(values, t(0.785925, 0.846574, 0.878290), atol=2e-6, rtol=0)
    # gradient of the comment on random margins
    h = torch.linspace(-80, 80, 17, dtype=torch.float64)
    inputs = margin_inputs(h)
    g = grad_wrt(discopop_loss, inputs[0], *inputs, beta=0.1, tau=0.05)
    u = 0.1 * h
    mod = torch.sigmoid(u / 0.05)
    expected = (mod * (1 - mod) / 0.05 * (torch.exp(-u) - F.softplus(-u))
                - (1 - mod) * torch.sigmoid(-u) - mod * torch.exp(-u))
    torch.testing.assert_close(g, 0.1 * expected)


def test_discopop_limits_and_stability():
    h = torch.linspace(-50, 50, 11, dtype=torch.float64)
    u = 0.1 * h
    # tau -> infinity: m = 1/2, the paper's CELL loss (softplus(-u) + exp(-u)) / 2
    cell, _ = discopop_loss(*margin_inputs(h), beta=0.1, tau=1e9)
    torch.testing.assert_close(cell, (F.softplus(-u) + torch.exp(-u)) / 2)
    # u = -1000 in float32: the naive product sigmoid(u / tau) * exp(-u) is 0 * inf = NaN; ours is finite
    # (~ softplus(1000) = 1000) with a finite gradient
    naive = torch.sigmoid(torch.tensor(-1000.0) / 0.05) * torch.exp(torch.tensor(1000.0))
    assert torch.isnan(naive)
    inputs = margin_inputs([-10000.0], dtype=torch.float32)
    losses, _ = discopop_loss(*inputs, beta=0.1)
    torch.testing.assert_close(losses, torch.tensor([1000.0]))
    assert torch.isfinite(grad_wrt(discopop_loss, inputs[0], *inputs, beta=0.1)).all()
    with pytest.raises(ValueError, match="tau must be > 0"):
        discopop_loss(*margin_inputs([1.0]), tau=0.0)


def test_fdpo_reverse_kl_is_dpo_exactly_and_every_divergence_starts_at_log2():
    rw, rl = random_rhos(n=32)
    base, _ = dpo_loss(*pair_inputs(rw, rl), beta=0.1)
    got, m = fdpo_loss(*pair_inputs(rw, rl), beta=0.1, divergence="reverse_kl")
    assert torch.equal(got, base)                                      # bit for bit, not just close
    torch.testing.assert_close(m["pref_logit"], 0.1 * (rw - rl))
    for divergence in L.FDPO_DIVERGENCES:
        losses, _ = fdpo_loss(*pair_inputs([0.0], [0.0]), divergence=divergence)
        torch.testing.assert_close(losses, t(LN2))


def test_fdpo_closed_forms_and_limits():
    # forward_kl: f'(u) = -1/u; rho_w = log 2 (u = 2), rho_l = 0 (u = 1): z = beta (-1/2 + 1) = 1 at beta = 2
    losses, m = fdpo_loss(*pair_inputs([math.log(2.0)], [0.0]), beta=2.0, divergence="forward_kl")
    torch.testing.assert_close(m["pref_logit"], t(1.0))
    torch.testing.assert_close(losses, t(SPM1))
    # js: f'(u) = log(2u / (1 + u)); rho_w = log 3 -> log(6/4), rho_l = 0 -> log(2/2): z = beta log 1.5
    losses, m = fdpo_loss(*pair_inputs([math.log(3.0)], [0.0]), beta=1 / math.log(1.5), divergence="js_divergence")
    torch.testing.assert_close(m["pref_logit"], t(1.0))
    # alpha_divergence: f'(u) = (1 - u^-a) / a; a = 0.5, rho_w = log 4 (u^-a = 1/2), rho_l = 0 (u^-a = 1):
    # z = beta * ((1 - 1/2) - (1 - 1)) / 0.5 = beta
    _, m = fdpo_loss(*pair_inputs([math.log(4.0)], [0.0]), beta=0.3, divergence="alpha_divergence", alpha=0.5)
    torch.testing.assert_close(m["pref_logit"], t(0.3))
    # alpha -> 0 approaches reverse_kl, alpha -> 1 approaches forward_kl (float64; rho up to ~60)
    rw, rl = random_rhos(scale=10.0)
    rev, _ = fdpo_loss(*pair_inputs(rw, rl), divergence="reverse_kl")
    fwd, _ = fdpo_loss(*pair_inputs(rw, rl), divergence="forward_kl")
    small, _ = fdpo_loss(*pair_inputs(rw, rl), divergence="alpha_divergence", alpha=1e-9)
    large, _ = fdpo_loss(*pair_inputs(rw, rl), divergence="alpha_divergence", alpha=1 - 1e-9)
    torch.testing.assert_close(small, rev, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(large, fwd, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
def test_fdpo_gradients_match_comment(divergence):
    rw, rl = random_rhos(scale=3.0)
    b, a = 0.5, 0.3
    gw, gl = grads(fdpo_loss, *pair_inputs(rw, rl), beta=b, divergence=divergence, alpha=a)
    g = {"reverse_kl": lambda r: r, "forward_kl": lambda r: -torch.exp(-r), "js_divergence": F.logsigmoid,
         "alpha_divergence": lambda r: -torch.exp(-a * r) / a}[divergence]
    gp = {"reverse_kl": lambda r: torch.ones_like(r), "forward_kl": lambda r: torch.exp(-r),
          "js_divergence": lambda r: torch.sigmoid(-r), "alpha_divergence": lambda r: torch.exp(-a * r)}[divergence]
    z = b * (g(rw) - g(rl))
    torch.testing.assert_close(gw, -b * torch.sigmoid(-z) * gp(rw))
    torch.testing.assert_close(gl, b * torch.sigmoid(-z) * gp(rl))


def test_fdpo_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="divergence must be one of"):
        fdpo_loss(*margin_inputs([1.0]), divergence="kl")
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"alpha .*\(0, 1\)"):
            fdpo_loss(*margin_inputs([1.0]), divergence="alpha_divergence", alpha=bad)


def test_cpo_closed_form_reduction_and_gradient():
    # S_w = S_l = -10, beta = 0.1, alpha = 1: softplus(0) + 10 = 10.693147
    losses, m = cpo_loss(t(-10.0), t(-10.0), beta=0.1, alpha=1.0)
    torch.testing.assert_close(losses, t(LN2 + 10.0))
    torch.testing.assert_close(m["nll_loss"], t(10.0))
    torch.testing.assert_close(m["pref_loss"], t(LN2))
    torch.testing.assert_close(m["chosen_rewards"], t(-1.0))            # beta * S(y_w)
    # alpha = 0: DPO with every reference log-prob 0
    sw, sl = random_rhos(scale=20.0)
    sw, sl = sw.abs().neg() - 1, sl.abs().neg() - 1                      # summed log-probs are <= 0
    torch.testing.assert_close(cpo_loss(sw, sl, beta=0.1, alpha=0.0)[0],
                               dpo_loss(sw, sl, torch.zeros_like(sw), torch.zeros_like(sl), beta=0.1)[0])
    # gradient of the comment
    sw, sl = sw.clone().requires_grad_(True), sl.clone().requires_grad_(True)
    losses, _ = cpo_loss(sw, sl, beta=0.1, alpha=0.7)
    gw, gl = torch.autograd.grad(losses.sum(), (sw, sl))
    v = 0.1 * (sw - sl).detach()
    torch.testing.assert_close(gw, -0.1 * torch.sigmoid(-v) - 0.7)
    torch.testing.assert_close(gl, 0.1 * torch.sigmoid(-v))
    with pytest.raises(ValueError, match="alpha .* must be >= 0"):
        cpo_loss(t(-1.0), t(-2.0), alpha=-1.0)


def test_kto_with_z_ref_passed_in():
    # beta = 0.1, rho_w = 10, rho_l = -10, z_ref = 2: sigmoid(0.1 (2 - 10)) + sigmoid(0.1 (-10 - 2))
    #   = sigmoid(-0.8) + sigmoid(-1.2) = 0.310026 + 0.231475 = 0.541501
    losses, m = kto_loss(*pair_inputs([10.0], [-10.0]), beta=0.1, z_ref=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))
    torch.testing.assert_close(losses, t(sig(-0.8) + sig(-1.2)))
    torch.testing.assert_close(losses, t(0.541501), atol=1e-6, rtol=0)
    torch.testing.assert_close(m["z_ref"], t(2.0))
    # the weights scale their own term: lambda_D = 2, lambda_U = 0.5
    losses, _ = kto_loss(*pair_inputs([10.0], [-10.0]), beta=0.1, z_ref=2.0, desirable_weight=2.0,
                         undesirable_weight=0.5)
    torch.testing.assert_close(losses, t(2 * sig(-0.8) + 0.5 * sig(-1.2)))
    # z_ref = 0 and unit weights: 1 + apo_zero_loss (TRL's apo_zero) on random inputs
    rw, rl = random_rhos()
    kto, _ = kto_loss(*pair_inputs(rw, rl), beta=0.2, z_ref=0.0)
    apo, _ = apo_zero_loss(*pair_inputs(rw, rl), beta=0.2)
    torch.testing.assert_close(kto, 1 + apo)
    with pytest.raises(ValueError, match="must be >= 0"):
        kto_loss(*pair_inputs([1.0], [0.0]), desirable_weight=-1.0)


def test_kto_estimates_z_ref_from_the_batch_without_gradient():
    # z_ref=None: max(0, mean over the batch of (rho_w + rho_l) / 2). rho_w = (2, -1), rho_l = (0, 3):
    # ((2 + 0)/2 + (-1 + 3)/2) / 2 = (1 + 1) / 2 = 1.  beta = 0.5:
    #   pair 1: sigmoid(0.5 (1 - 2)) + sigmoid(0.5 (0 - 1)) = 2 sigmoid(-0.5)
    #   pair 2: sigmoid(0.5 (1 + 1)) + sigmoid(0.5 (3 - 1)) = 2 sigmoid(1)
    losses, m = kto_loss(*pair_inputs([2.0, -1.0], [0.0, 3.0]), beta=0.5)
    torch.testing.assert_close(m["z_ref"], t(1.0, 1.0))
    torch.testing.assert_close(losses, t(2 / (1 + math.exp(0.5)), 2 / (1 + math.exp(-1.0))))
    # a negative batch mean is clamped to 0: rho = (-4, -2) -> mean -3 -> z_ref = 0
    _, m = kto_loss(*pair_inputs([-4.0], [-2.0]))
    torch.testing.assert_close(m["z_ref"], t(0.0))
    # no gradient flows through the estimate: the gradient equals that with the same z_ref passed as a constant,
    # and the formula of the comment with z_ref fixed
    rw, rl = random_rhos(scale=8.0)
    rw = rw + 6.0                                                        # a positive batch mean, so z_ref > 0
    inputs = pair_inputs(rw, rl)
    _, m = kto_loss(*inputs, beta=0.1)
    z = m["z_ref"][0].item()
    assert z == pytest.approx(max(0.0, ((rw + rl) / 2).mean().item())) and z > 0
    g_none = grads(kto_loss, *inputs, beta=0.1)
    g_const = grads(kto_loss, *inputs, beta=0.1, z_ref=z)
    for a, b in zip(g_none, g_const):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_none[0], -0.1 * sprime(0.1 * (z - rw)))
    torch.testing.assert_close(g_none[1], 0.1 * sprime(0.1 * (rl - z)))


def test_kto_registry_entry_leaves_z_ref_to_the_function():
    # train.py fills only the entry's hparams: z_ref is not one, so training uses the detached batch estimate
    assert "z_ref" not in LOSSES["kto"].hparams and not LOSSES["kto"].running
    import inspect
    assert inspect.signature(kto_loss).parameters["z_ref"].default is None


def test_losses_that_cannot_be_finite_at_the_extremes():
    # The generic test below checks every registry entry at its defaults at |beta h| = 1000. These forms are NOT
    # finite there by construction (their derivations say why), and this pins what they do instead:
    #  - f-DPO forward_kl / alpha_divergence: exp(alpha |rho|) overflows at |rho| = 10000: loss +inf when y_w is the
    #    unlikely one, and loss 0 with a NaN gradient (0 * inf) when y_l is;
    #  - DiscoPOP with tau > 1: its exponential branch grows like exp((1 - 1/tau) |u|) as u -> -inf.
    good, bad, ref = torch.tensor([-10.0]), torch.tensor([-10010.0]), torch.tensor([-10.0])
    for divergence in ("forward_kl", "alpha_divergence"):
        losses, _ = fdpo_loss(bad, good, ref, ref, divergence=divergence)
        assert torch.isinf(losses).all()
        pr = bad.clone().requires_grad_(True)
        losses, _ = fdpo_loss(good, pr, ref, ref, divergence=divergence)
        (g,) = torch.autograd.grad(losses.sum(), pr)
        assert losses.item() == 0.0 and torch.isnan(g).all()
    for divergence in ("reverse_kl", "js_divergence"):                 # these two are finite both ways
        for a, b in ((good, bad), (bad, good)):
            pc = a.clone().requires_grad_(True)
            losses, _ = fdpo_loss(pc, b, ref, ref, divergence=divergence)
            (g,) = torch.autograd.grad(losses.sum(), pc)
            assert torch.isfinite(losses).all() and torch.isfinite(g).all()
    losses, _ = discopop_loss(bad, good, ref, ref, tau=2.0)
    assert torch.isinf(losses).all()
    losses, _ = discopop_loss(bad, good, ref, ref, tau=1.0)               # tau <= 1 stays finite
    assert torch.isfinite(losses).all()


# ------------------------------------------------------------------------------------------------------------
# Every loss: independent re-derivation, stability, no leaks, shapes
# ------------------------------------------------------------------------------------------------------------
def _random_case(B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    summed = lambda: -torch.rand(B, generator=g, dtype=torch.float64) * 60 - 1      # S in [-61, -1]
    avg = lambda: -torch.rand(B, generator=g, dtype=torch.float64) * 4 - 0.05       # Sbar in [-4.05, -0.05]
    return dict(pc=summed(), pr=summed(), rc=summed(), rr=summed(), ac=avg(), ar=avg(),
                Rw=torch.randn(B, generator=g, dtype=torch.float64),
                Rl=torch.randn(B, generator=g, dtype=torch.float64),
                Rk=torch.randn(3, B, generator=g, dtype=torch.float64),
                rw=torch.randn(B, generator=g, dtype=torch.float64),
                rl=torch.randn(B, generator=g, dtype=torch.float64))


def test_every_loss_against_a_fresh_rederivation():
    """Each line re-derives a loss from its formula with naive float64 operations (written for this test)."""
    c = _random_case()
    sig = torch.sigmoid
    h = (c["pc"] - c["rc"]) - (c["pr"] - c["rr"])
    ha = (c["ac"] - c["rc"] / 30) - (c["ar"] - c["rr"] / 30)       # averaged-scale margin for IPO
    b, e, k = 0.1, 0.15, 0.25
    fkl = ((c["rc"] - c["pc"]) + (c["rr"] - c["pr"])) / 2
    odds = lambda s: torch.exp(s) / (1 - torch.exp(s))
    cases = {
        "dpo": (dpo_loss(c["pc"], c["pr"], c["rc"], c["rr"], beta=b)[0], -torch.log(sig(b * h))),
        "cdpo": (cdpo_loss(c["pc"], c["pr"], c["rc"], c["rr"], beta=b, label_smoothing=e)[0],
                 -(1 - e) * torch.log(sig(b * h)) - e * torch.log(sig(-b * h))),
        "rdpo": (rdpo_loss(c["pc"], c["pr"], c["rc"], c["rr"], beta=b, label_smoothing=e)[0],
                 ((1 - e) * -torch.log(sig(b * h)) - e * -torch.log(sig(-b * h))) / (1 - 2 * e)),
        "ipo": (ipo_loss(c["ac"], c["ar"], c["rc"] / 30, c["rr"] / 30, beta=b)[0], (ha - 1 / (2 * b)) ** 2),
        "hinge": (hinge_loss(c["pc"], c["pr"], c["rc"], c["rr"], beta=b)[0], torch.clamp(1 - b * h, min=0)),
        "simpo": (simpo_loss(c["ac"], c["ar"], beta=2.0, gamma=0.8)[0],
                  -torch.log(sig(2.0 * c["ac"] - 2.0 * c["ar"] - 0.8))),
        "orpo": (orpo_loss(c["ac"], c["ar"], beta=b)[0],
                 -c["ac"] - b * torch.log(sig(torch.log(odds(c["ac"]) / odds(c["ar"]))))),
        "distill": (distill_loss(c["pc"], c["pr"], c["rc"], c["rr"], c["Rw"], c["Rl"], beta=b)[0],
                    ((c["Rw"] - c["Rl"]) - b * h) ** 2),
        "edpo": (edpo_loss(c["pc"], c["pr"], c["rc"], c["rr"], c["Rk"], torch.zeros_like(c["Rk"]), beta=b,
                           kl_coef=k, aggregate="example_min")[0],
                 torch.stack([(c["Rk"][i] - b * h) ** 2 for i in range(3)]).min(0).values + k * fkl),
        "pdpo": (pdpo_loss(c["pc"], c["pr"], c["rc"], c["rr"], beta=b, kl_coef=k)[0],
                 -torch.log(sig(b * h)) + k * fkl),
    }
    p_u = sig(torch.log(1 - torch.exp(c["ar"])) - torch.log(1 - torch.exp(c["ac"])))
    cases["drdo"] = (drdo_loss(c["rw"], c["rl"], c["Rw"], c["Rl"], c["ac"], c["ar"], alpha=0.6, gamma=1.5)[0],
                     ((c["Rw"] - c["Rl"]) - (c["rw"] - c["rl"])) ** 2 - 0.6 * (1 - p_u) ** 1.5 * torch.log(p_u))
    cases["sft"] = (sft_loss(c["ac"], c["ar"])[0], -c["ac"])
    rw, rl = c["pc"] - c["rc"], c["pr"] - c["rr"]                      # rho(y_w), rho(y_l)
    p, eps, d, tau, a = sig(b * h), 0.02, 0.2, 0.05, 0.05   # a small: exp(-a rho) stays moderate for naive logs
    z_kto = torch.clamp(((rw + rl) / 2).mean(), min=0)
    four = (c["pc"], c["pr"], c["rc"], c["rr"])
    cases.update({
        "nca": (nca_loss(*four, beta=b)[0],
                -torch.log(sig(b * rw)) - 0.5 * torch.log(sig(-b * rw)) - 0.5 * torch.log(sig(-b * rl))),
        "apo_zero": (apo_zero_loss(*four, beta=b)[0], -sig(b * rw) + sig(b * rl)),
        "apo_down": (apo_down_loss(*four, beta=b)[0], sig(b * rw) - sig(b * rw - b * rl)),
        "sppo_hard": (sppo_hard_loss(*four, beta=b)[0], (rw - 1 / (2 * b)) ** 2 + (rl + 1 / (2 * b)) ** 2),
        "exo": (exo_loss(*four, beta=b, epsilon=eps)[0],
                p * torch.log(p / (1 - eps)) + (1 - p) * torch.log((1 - p) / eps)),
        "bco_pair": (bco_pair_loss(*four, beta=b, delta=d)[0],
                     -torch.log(sig(b * rw - d)) - torch.log(sig(-(b * rl - d)))),
        "discopop": (discopop_loss(*four, beta=b, tau=tau)[0],
                     (1 - sig(b * h / tau)) * torch.log(1 + torch.exp(-b * h))
                     + sig(b * h / tau) * torch.exp(-b * h)),
        "fdpo": (fdpo_loss(*four, beta=b, divergence="alpha_divergence", alpha=a)[0],
                 -torch.log(sig(b * ((1 - torch.exp(rw) ** -a) / a - (1 - torch.exp(rl) ** -a) / a)))),
        "cpo": (cpo_loss(c["pc"], c["pr"], beta=b, alpha=0.7)[0],
                -torch.log(sig(b * c["pc"] - b * c["pr"])) - 0.7 * c["pc"]),
        "kto": (kto_loss(*four, beta=b, desirable_weight=1.0, undesirable_weight=1.5)[0],
                (1 - sig(b * (rw - z_kto))) + 1.5 * (1 - sig(b * (z_kto - rl)))),
    })
    assert set(cases) == set(LOSSES), "a registered loss has no re-derivation here"
    for name, (ours, fresh) in cases.items():
        torch.testing.assert_close(ours, fresh, msg=lambda m, n=name: f"{n}: {m}")


def _call(name, pc, pr, rc, rr, ac, ar, Rw, Rl, rw, rl):
    """Call a registered loss the way train.py does: the tensor pairs its entry names, in order.
    Policy and reference log-probs come summed (pc, pr, rc, rr) or averaged (ac, ar; reference / 30)."""
    info = LOSSES[name]
    average = info.average_logps
    pairs = {"policy": (ac, ar) if average else (pc, pr),
             "reference": (rc / 30, rr / 30) if average else (rc, rr),
             "oracle": (Rw, Rl),
             "oracle_members": (Rw[None].expand(2, -1), Rl[None].expand(2, -1)),
             "student": (rw, rl)}
    return info.fn(*[x for n in info.inputs for x in pairs[n]])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_metrics_detached_and_frozen_inputs_get_no_gradient(name):
    c = {k: v.float().requires_grad_(True) for k, v in _random_case(B=4).items() if k != "Rk"}
    losses, metrics = _call(name, **c)
    assert losses.shape == (4,)
    assert {"chosen_rewards", "rejected_rewards"} <= set(metrics)
    for key, value in metrics.items():
        assert not value.requires_grad, f"{name}: metrics[{key!r}] is not detached"
        # (B,), except the (B, K) per-candidate metrics the entry's `window` keywords are chosen from (e-DPO's
        # member_losses: K = 2 ensemble members in _call)
        window_metrics = {w.metric for w in LOSSES[name].window.values()}
        expected = (4, 2) if key in window_metrics else (4,)
        assert value.shape == expected, f"{name}: metrics[{key!r}] has shape {tuple(value.shape)}"
    losses.sum().backward()
    for frozen in ("rc", "rr", "Rw", "Rl"):                # reference log-probs and Oracle rewards
        assert c[frozen].grad is None, f"{name}: gradient reached frozen input {frozen}"
    policy = ("ac", "ar") if LOSSES[name].average_logps else ("pc", "pr")
    assert c[policy[0]].grad is not None and c[policy[0]].grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("extreme", ["beta_h_plus_1000", "beta_h_minus_1000", "logps_near_0", "logps_near_-1000"])
def test_every_loss_is_finite_at_extremes(name, extreme):
    # Every entry at its function's defaults. The forms that cannot be finite here by construction (f-DPO's
    # forward_kl / alpha_divergence, DiscoPOP with tau > 1) are not registry defaults; they are pinned in
    # test_losses_that_cannot_be_finite_at_the_extremes.
    B = 3
    base = {k: v.float() for k, v in _random_case(B=B).items() if k != "Rk"}
    if extreme.startswith("beta_h"):
        # h = +-10000 with the default beta = 0.1, so beta * h = +-1000; averaged log-probs as far apart
        # as they can be (near 0 against -1000), which is the same extreme for SimPO, ORPO and DRDO's z.
        good, bad = torch.full((B,), -10.0), torch.full((B,), -10010.0)
        near0, far = torch.full((B,), -1e-3), torch.full((B,), -1000.0)
        if extreme == "beta_h_plus_1000":
            base["pc"], base["pr"], base["ac"], base["ar"] = good, bad, near0, far
        else:
            base["pc"], base["pr"], base["ac"], base["ar"] = bad, good, far, near0
        base["rc"], base["rr"] = torch.full((B,), -10.0), torch.full((B,), -10.0)
    elif extreme == "logps_near_0":
        for k in ("pc", "pr", "rc", "rr", "ac", "ar"):
            base[k] = torch.tensor([-1e-7, -1e-4, 0.0])
    else:
        for k in ("pc", "pr", "rc", "rr", "ac", "ar"):
            base[k] = torch.tensor([-1000.0, -999.0, -1001.0])
    leaves = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    losses, _ = _call(name, **leaves)
    losses.sum().backward()
    assert torch.isfinite(losses).all(), f"{name} at {extreme}: loss {losses}"
    for k, v in leaves.items():
        if v.grad is not None:
            assert torch.isfinite(v.grad).all(), f"{name} at {extreme}: grad of {k} {v.grad}"


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"same shape \(B,\)"):
        dpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3))


def test_registry_metadata():
    reference_free = {n for n, i in LOSSES.items() if not i.needs_reference}
    assert reference_free == {"simpo", "orpo", "drdo", "sft", "cpo"}
    assert {n for n, i in LOSSES.items() if i.needs_oracle} == {"distill", "edpo", "drdo"}
    assert {n for n, i in LOSSES.items() if i.average_logps} == {"ipo", "simpo", "orpo", "drdo", "sft"}
    assert {n: i.running for n, i in LOSSES.items() if i.running} == {"bco_pair": {"delta": "reward_mean"}}
    from losses import WindowArgmin
    assert {n: i.window for n, i in LOSSES.items() if i.window} == {
        "edpo": {"member": WindowArgmin("member_losses", ("aggregate", "batch_min"))}}
    # train.py --wpo: the pairwise preference losses, not those with an NLL, KL, Oracle or SFT term
    assert {n for n, i in LOSSES.items() if not i.wpo} == {"orpo", "cpo", "pdpo", "distill", "edpo", "drdo", "sft"}


@pytest.mark.parametrize("name", sorted(n for n, i in LOSSES.items() if i.running))
def test_registry_running_keywords_are_keywords_fed_by_the_loss_own_metrics(name):
    # train.py fills each `running` keyword with the mean of the named metric over past pairs: the keyword must be
    # a keyword-only argument that no Config field fills, and the metric one the function returns, shape (B,)
    import inspect
    info = LOSSES[name]
    params = inspect.signature(info.fn).parameters
    for keyword, metric in info.running.items():
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY and keyword not in info.hparams
        _, metrics = _call(name, **{k: v for k, v in _random_case(B=5).items() if k != "Rk"})
        assert metrics[metric].shape == (5,)


@pytest.mark.parametrize("name", sorted(n for n, i in LOSSES.items() if i.window))
def test_registry_window_keywords_are_keywords_chosen_from_the_loss_own_candidate_metrics(name):
    # train.py fills each `window` keyword with argmin_k of the named (B, K) metric summed over the optimizer
    # batch: a keyword-only argument no Config field fills, a metric the function returns with one column per
    # candidate, and a `when` condition on a real Config field whose value is among its choices
    import inspect
    from dataclasses import fields

    from config import CHOICES, Config
    info = LOSSES[name]
    params = inspect.signature(info.fn).parameters
    for keyword, rule in info.window.items():
        assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY and keyword not in info.hparams
        _, metrics = _call(name, **{k: v for k, v in _random_case(B=5).items() if k != "Rk"})
        assert metrics[rule.metric].shape == (5, 2)                    # _call gives e-DPO K = 2 members
        field_name, value = rule.when
        assert field_name in {f.name for f in fields(Config)} and value in CHOICES[field_name]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_hparams_are_keywords_of_the_function_and_fields_of_the_config(name):
    # every keyword the entry fills exists in the function's signature, and every field it reads exists in
    # train.Config: a renamed argument or field fails here, not silently in a training run
    import inspect
    from dataclasses import fields

    import train
    info = LOSSES[name]
    params = inspect.signature(info.fn).parameters
    keyword_only = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(info.hparams) <= keyword_only, (name, set(info.hparams) - keyword_only)
    assert set(info.hparams.values()) <= {f.name for f in fields(train.Config)}
    # and the positional parameters are exactly two per named input
    positional = [p for p, v in params.items() if v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert len(positional) == 2 * len(info.inputs), (name, positional, info.inputs)


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


# ------------------------------------------------------------------------------------------------------------
# sequence_logps
# ------------------------------------------------------------------------------------------------------------
def logits_from_probs(rows):
    """(B, T, V) logits whose log-softmax is log(p) exactly: logits = log p."""
    return torch.log(torch.tensor(rows, dtype=torch.float64))


A, Bq, C = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]   # next-token distributions over V = 3


def test_sequence_logps_hand_written_right_padding():
    # vocabulary {0, 1, 2}; T = 4; position t predicts token t+1
    logits = logits_from_probs([
        [A, Bq, C, A],      # row 0: prompt [0], completion [1, 2, 0]
        [A, A, C, Bq],      # row 1: prompt [2, 1], completion [2], then 1 pad (id 0)
    ])
    labels = torch.tensor([[0, 1, 2, 0],
                           [2, 1, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 1, 0]])
    # row 0: log A[1] + log Bq[2] + log C[0] = log 0.25 + log 0.25 + log 0.1
    # row 1: token 2 at t=2 is predicted at t=1 by A: log A[2] = log 0.25 (the pad and the last logit unused)
    row0 = math.log(0.25) + math.log(0.25) + math.log(0.1)
    row1 = math.log(0.25)
    torch.testing.assert_close(sequence_logps(logits, labels, mask), t(row0, row1))
    torch.testing.assert_close(sequence_logps(logits, labels, mask, average=True), t(row0 / 3, row1 / 1))


def test_sequence_logps_hand_written_left_padding():
    # the same row 1 as above, left-padded: [pad, 2, 1, 2]; mask [0, 0, 0, 1]
    logits = logits_from_probs([
        [C, C, A, A],       # the logits at the pad and prompt positions before t=2 are irrelevant
    ])
    labels = torch.tensor([[0, 2, 1, 2]])
    mask = torch.tensor([[0, 0, 0, 1]])
    # token 2 at t=3 is predicted at t=2 by A: log 0.25
    torch.testing.assert_close(sequence_logps(logits, labels, mask), t(math.log(0.25)))
    # a masked label of -100 (HF's ignore index) must not break the gather
    labels_ignore = torch.tensor([[-100, 2, 1, 2]])
    torch.testing.assert_close(sequence_logps(logits, labels_ignore, mask), t(math.log(0.25)))


def test_sequence_logps_three_rows_of_five():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1],    # right-aligned completion of 3
                         [0, 1, 1, 0, 0],    # completion of 2, then 2 pads
                         [0, 0, 0, 0, 1]])   # completion of 1 (last token)
    logp = torch.log_softmax(logits, -1)
    expected_sum = t(
        logp[0, 1, labels[0, 2]] + logp[0, 2, labels[0, 3]] + logp[0, 3, labels[0, 4]],
        logp[1, 0, labels[1, 1]] + logp[1, 1, labels[1, 2]],
        logp[2, 3, labels[2, 4]])
    torch.testing.assert_close(sequence_logps(logits, labels, mask), expected_sum)
    torch.testing.assert_close(sequence_logps(logits, labels, mask, average=True), expected_sum / t(3, 2, 1))


def test_sequence_logps_matches_plain_rederivation_on_random_inputs():
    g = torch.Generator().manual_seed(2)
    B, T, V = 4, 9, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.4).long()
    plain = (torch.log_softmax(logits[:, :-1], -1).gather(2, labels[:, 1:, None])[..., 0] * mask[:, 1:]).sum(-1)
    torch.testing.assert_close(sequence_logps(logits, labels, mask), plain)


def test_sequence_logps_bf16_path_matches_fp32_including_gradient():
    g = torch.Generator().manual_seed(3)
    logits16 = (torch.randn(3, 6, 13, generator=g) * 4).bfloat16().requires_grad_(True)
    logits32 = logits16.detach().float().requires_grad_(True)   # the same numbers, in fp32
    labels = torch.randint(0, 13, (3, 6), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    out16, out32 = sequence_logps(logits16, labels, mask), sequence_logps(logits32, labels, mask)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, out32, atol=1e-5, rtol=1e-5)
    (g16,) = torch.autograd.grad(out16.sum(), logits16)
    (g32,) = torch.autograd.grad(out32.sum(), logits32)
    torch.testing.assert_close(g16.float(), g32, atol=1e-2, rtol=1e-2)   # g16 is rounded to bf16


def test_sequence_logps_bf16_without_grad_takes_the_row_loop_and_matches_fp32():
    # the no-grad branch of the fp32 log-sum-exp (reference log-probs, evaluation): bf16 logits, no autograd
    g = torch.Generator().manual_seed(4)
    logits16 = (torch.randn(3, 6, 13, generator=g) * 4).bfloat16()
    labels = torch.randint(0, 13, (3, 6), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        out16 = sequence_logps(logits16, labels, mask)
    out32 = sequence_logps(logits16.float(), labels, mask)
    assert out16.dtype == torch.float32 and not out16.requires_grad
    torch.testing.assert_close(out16, out32, atol=1e-5, rtol=1e-5)


def test_sequence_wpo_logps_hand_written():
    # the rows of test_sequence_logps_hand_written_right_padding; per token log(p(y_t) / sum_v p(v)^2) with
    # sum p^2 = 0.375 for A and Bq (0.25 + 0.0625 + 0.0625) and 0.66 for C (0.01 + 0.01 + 0.64):
    # row 0: tokens 1, 2, 0 predicted by A, Bq, C: [log(0.25/0.375) + log(0.25/0.375) + log(0.1/0.66)] / 3
    # row 1: token 2 predicted by A: log(0.25/0.375) = log(2/3)
    logits = logits_from_probs([[A, Bq, C, A], [A, A, C, Bq]]).requires_grad_(True)
    labels = torch.tensor([[0, 1, 2, 0], [2, 1, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    got = L.sequence_wpo_logps(logits, labels, mask)
    torch.testing.assert_close(got, t((2 * math.log(2 / 3) + math.log(0.1 / 0.66)) / 3, math.log(2 / 3)))
    assert not got.requires_grad                                       # detached: no graph is built
    # a uniform next-token distribution: p = 1/V = sum p^2 -> 0 for every token, whatever the logits' offset
    uniform = torch.full((2, 5, 7), 3.0, dtype=torch.float64)
    ids, ones = torch.randint(0, 7, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    torch.testing.assert_close(L.sequence_wpo_logps(uniform, ids, ones), t(0.0, 0.0))


def test_sequence_wpo_logps_matches_plain_rederivation_and_bf16():
    g = torch.Generator().manual_seed(4)
    B, T, V = 3, 8, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    p = torch.softmax(logits[:, :-1].double(), -1)                            # (B, T-1, V)
    per_token = torch.log(p.gather(2, labels[:, 1:, None])[..., 0] / (p ** 2).sum(-1))
    m = mask[:, 1:].double()
    plain = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)
    torch.testing.assert_close(L.sequence_wpo_logps(logits, labels, mask).double(), plain, atol=1e-5, rtol=1e-5)
    out16 = L.sequence_wpo_logps(logits.bfloat16(), labels, mask)
    assert out16.dtype == torch.float32
    out32 = L.sequence_wpo_logps(logits.bfloat16().float(), labels, mask)    # the same numbers, in fp32
    torch.testing.assert_close(out16, out32, atol=1e-5, rtol=1e-5)


def test_wpo_weights_closed_form_detach_and_clamp():
    # a(y_w) = log(2/3), a(y_l) = log(1/2) -> w = (2/3)(1/2) = 1/3;  a = (log 2, log 1.5) -> w = 3 (> 1, kept)
    a_w = t(math.log(2 / 3), math.log(2.0), grad=True)
    a_l = t(math.log(0.5), math.log(1.5), grad=True)
    w = L.wpo_weights(a_w, a_l)
    torch.testing.assert_close(w, t(1 / 3, 3.0))
    assert not w.requires_grad
    # max_weight=1.0 is the authors' code / TRL's clamp (README deviation 23)
    torch.testing.assert_close(L.wpo_weights(a_w, a_l, max_weight=1.0), t(1 / 3, 1.0))
    # weighted DPO: each pair's loss times its weight, and the gradient is the weight times DPO's (weights constant)
    inputs = margin_inputs([4.0, -2.0])
    losses, _ = dpo_loss(*inputs, beta=0.1)
    (g,) = torch.autograd.grad((losses * w).sum(), inputs[0])
    torch.testing.assert_close(g, w * -0.1 * torch.sigmoid(-0.1 * t(4.0, -2.0)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sequence_logps_packed_layout_equals_the_full_one(dtype):
    # the (M, V) layout = the full logits at the positions that predict a completion token, row-major
    g = torch.Generator().manual_seed(6)
    B, T, V = 3, 7, 11
    full = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])
    keep = torch.zeros(B, T, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()
    packed = full[keep]                                                  # (M, V), M = 3 + 6 + 2
    assert packed.shape == (11, V)
    for average in (False, True):
        torch.testing.assert_close(sequence_logps(packed, labels, mask, average),
                                   sequence_logps(full, labels, mask, average))
    torch.testing.assert_close(L.sequence_wpo_logps(packed, labels, mask), L.sequence_wpo_logps(full, labels, mask))
    with pytest.raises(ValueError, match="or \\(M, V\\)"):
        sequence_logps(packed[:-1], labels, mask)                        # one position missing


def test_sequence_logps_shape_error():
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        sequence_logps(torch.zeros(2, 4, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logps_keeps_no_second_full_size_fp32_copy_for_backward(dtype):
    # Autograd's saved tensors are what stays alive between forward and backward. Record every tensor saved
    # while computing sequence_logps and check none is an fp32 tensor of the logits' (B, T-1, V) size
    # (a log_softmax output or an fp32 upcast would be). For fp32 logits, the logits themselves may be saved.
    B, T, V = 2, 7, 50
    logits = torch.randn(B, T, V).to(dtype).requires_grad_(True)
    labels = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sequence_logps(logits, labels, mask)
    full = [t for t in saved if t.dtype == torch.float32 and t.numel() >= B * (T - 1) * V
            and t.data_ptr() != logits.data_ptr()]
    assert not full, [tuple(t.shape) for t in full]
    out.sum().backward()                               # and the gradient is still computed
    assert torch.isfinite(logits.grad.float()).all()


# ------------------------------------------------------------------------------------------------------------
# Dynamics on a tabular toy: implicit-reward DRDO on a tied pair (the README's claim for the default student)
# ------------------------------------------------------------------------------------------------------------
def test_implicit_reward_drdo_settles_a_tied_pair_at_a_finite_gap_near_the_oracle_target_unlike_dpo():
    # One prompt, two one-token responses, policy pi = softmax(theta), pi_ref uniform. The pair (y1 > y2) is a
    # tie for the Oracle: dR = 0. Write g = S(y1) - S(y2) = theta_1 - theta_2. With one token, Sbar = S, and
    # with two responses e^S(y1) = p, e^S(y2) = 1 - p, so the unlikelihood score is
    #     z = log(1 - e^S(y2)) - log(1 - e^S(y1)) = log p - log(1 - p) = g.
    # Implicit-sum DRDO: L(g) = (0 - beta_r g)^2 + alpha F_gamma(g); its minimum solves
    #     2 beta_r^2 g + alpha F'_gamma(g) = 0,   F'(g) = (1-p)^gamma [gamma p log p - (1-p)], p = sigmoid(g),
    # a finite gap that shrinks to the Oracle's target 0 as alpha -> 0. DPO's loss softplus(-beta g) has no
    # minimum: g grows without bound (like log t under gradient descent).
    beta_r, gamma, lr, steps = 1.0, 2.0, 0.1, 1000        # GD on g: factor 1 - 4 lr beta_r^2 = 0.6 per step

    def equilibrium(alpha):                                  # bisection on 2 beta_r^2 g + alpha F'(g) = 0
        def f(g):
            p = 1 / (1 + math.exp(-g))
            return 2 * beta_r ** 2 * g + alpha * (1 - p) ** gamma * (gamma * p * math.log(p) - (1 - p))
        lo, hi = 0.0, 10.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2

    def run(loss_of_theta):
        theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        gaps = []
        for _ in range(steps):
            (grad,) = torch.autograd.grad(loss_of_theta(theta), theta)
            with torch.no_grad():
                theta -= lr * grad
            gaps.append((theta[0] - theta[1]).item())
        return gaps

    def drdo(alpha):
        def loss(theta):
            S = torch.log_softmax(theta, 0)                  # S(y1), S(y2); one token each, so Sbar = S
            losses, _ = drdo_loss(beta_r * S[:1], beta_r * S[1:], t(0.0), t(0.0), S[:1], S[1:], alpha=alpha,
                                  gamma=gamma, score="unlikelihood")
            return losses.sum()
        return loss

    for alpha in (1.0, 0.2):
        gaps = run(drdo(alpha))
        assert gaps[-1] == pytest.approx(equilibrium(alpha), abs=1e-6), (alpha, gaps[-1], equilibrium(alpha))
        assert abs(gaps[-1] - gaps[-300]) < 1e-9                            # settled
    assert equilibrium(0.2) < equilibrium(1.0) < 0.25                      # smaller alpha: closer to 0
    assert abs(run(drdo(0.0))[-1]) < 1e-9                                  # pure distillation: exactly the target

    dpo = run(lambda theta: dpo_loss(theta[:1], theta[1:], t(0.0), t(0.0), beta=0.1)[0].sum())
    assert dpo[-1] > 10 * equilibrium(1.0) and dpo[-1] - dpo[-300] > 0.05   # large, and still growing
