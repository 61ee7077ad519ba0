"""The iterative / online Nash family's losses (losses.py: sppo, dno, inpo, mnpo, online_ipo, accelerated_dpo and the win-rate
estimate), each against hand-computed values (the arithmetic in a comment), a reduction to a loss tested
elsewhere, and autograd against the gradient written above the function.
"""
import math

import pytest
import torch

from loss_test_helpers import LN2, t
from losses import (accelerated_dpo_loss, dno_loss, ofs_dpo_loss, dpo_loss, inpo_loss, mnpo_loss, online_ipo_loss, sppo_hard_loss,
                    sppo_loss, win_rates)


# ------------------------------------------------------------------------------------------------------------
# Win rates from a Bradley-Terry annotator
# ------------------------------------------------------------------------------------------------------------
def test_win_rates_by_hand():
    # rewards (0, ln 3, -ln 3): sigmoid(ln 3) = 3/4, sigmoid(2 ln 3) = 9/10; with P(y_i > y_i) = 1/2 counted:
    #   P_0 = (1/2 + 1/4 + 3/4) / 3 = 1/2;  P_1 = (3/4 + 1/2 + 9/10) / 3 = 43/60;  P_2 = (1/4 + 1/10 + 1/2) / 3 = 17/60
    r = t(0.0, math.log(3), -math.log(3)).view(1, 3)
    torch.testing.assert_close(win_rates(r), t(0.5, 43 / 60, 17 / 60).view(1, 3), rtol=0, atol=1e-15)


def test_win_rates_sum_to_half_of_k_and_follow_the_reward_order():
    # P(i > k) + P(k > i) = 1, so sum_i P_hat_i = (1/K) * K^2 / 2 = K / 2; a higher reward always wins more
    r = torch.randn(7, 5, dtype=torch.float64)
    P = win_rates(r)
    torch.testing.assert_close(P.sum(-1), torch.full((7,), 2.5, dtype=torch.float64))
    assert torch.equal(P.argsort(-1), r.argsort(-1))


# ------------------------------------------------------------------------------------------------------------
# SPPO
# ------------------------------------------------------------------------------------------------------------
def test_sppo_sanity_value_with_k5_win_rates():
    # y_w beats the 4 others surely: P_w = (1/2 + 4)/5 = 0.9, y_l loses surely: 0.1; eta = 1000 at pi = pi_t:
    # [(0 - 400)^2 + (0 + 400)^2] / 2 = 160,000
    P = win_rates(t(1e3, 0.0, 1.0, -1.0, -1e3).view(1, 5))[0]
    assert abs(P[0].item() - 0.9) < 1e-12 and abs(P[4].item() - 0.1) < 1e-12
    zero = t(0.0)
    losses, _ = sppo_loss(zero, zero, zero, zero, P[:1], P[4:], eta=1000.0)
    torch.testing.assert_close(losses, t(160_000.0), rtol=1e-12, atol=0)


def test_sppo_gradient_is_the_written_one_and_raises_the_winner():
    # d loss / d rho(y) = rho(y) - eta (P(y) - 1/2)
    pc, pr = t(-3.0, -7.0, grad=True), t(-4.0, -2.0, grad=True)
    ac, ar, Pw, Pl = t(-3.5, -6.0), t(-4.0, -1.0), t(0.8, 0.6), t(0.3, 0.45)
    losses, _ = sppo_loss(pc, pr, ac, ar, Pw, Pl, eta=10.0)
    gc, gr = torch.autograd.grad(losses.sum(), (pc, pr))
    torch.testing.assert_close(gc, (pc - ac) - 10.0 * (Pw - 0.5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gr, (pr - ar) - 10.0 * (Pl - 0.5), rtol=1e-12, atol=1e-12)
    assert (gc[0] < 0).item()                                     # rho(y_w) = 0.5 < 10 * 0.3: pushed up


def test_sppo_with_hard_win_rates_is_half_of_sppo_hard():
    # P_w = 1, P_l = 0, eta = 1/beta, pi_t = pi_ref: the mean of the two squares is sppo_hard's sum / 2
    pc, pr, rc, rr = t(-3.0, 1.0), t(-4.0, 0.5), t(-3.5, 0.0), t(-4.0, 2.0)
    soft, _ = sppo_loss(pc, pr, rc, rr, t(1.0, 1.0), t(0.0, 0.0), eta=1 / 0.1)
    hard, _ = sppo_hard_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(soft, hard / 2, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------------------
# DNO
# ------------------------------------------------------------------------------------------------------------
def test_dno_is_ln2_at_pi_t_and_stationary_at_the_win_rate_gap():
    zero = t(0.0, 0.0)
    losses, _ = dno_loss(zero, zero, zero, zero, t(0.9, 0.3), t(0.2, 0.8), eta=0.1)
    torch.testing.assert_close(losses, t(LN2, LN2), rtol=1e-12, atol=0)
    # win rates (0.9, 0.2), eta = 0.1: the optimum is eta h = 0.7, h = 7.0; the gradient vanishes there
    h = t(7.0, grad=True)
    losses, _ = dno_loss(h, t(0.0), t(0.0), t(0.0), t(0.9), t(0.2), eta=0.1)
    (g,) = torch.autograd.grad(losses.sum(), h)
    assert abs(g.item()) < 1e-15


def test_dno_gradient_and_its_hard_label_limit_is_dpo_against_pi_t():
    # d loss / d h = eta (sigmoid(eta h) - z*),  z* = sigmoid(P_w - P_l)
    h = t(3.0, -2.0, grad=True)
    Pw, Pl = t(0.7, 0.4), t(0.1, 0.6)
    losses, _ = dno_loss(h, t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), Pw, Pl, eta=0.5)
    (g,) = torch.autograd.grad(losses.sum(), h)
    torch.testing.assert_close(g, 0.5 * (torch.sigmoid(0.5 * h) - torch.sigmoid(Pw - Pl)), rtol=1e-12, atol=1e-15)
    # a target at 1 (win-rate gap 60: z* = 1 - 9e-27) is Eq. 13, DPO with beta = eta and pi_t as reference
    pc, pr, ac, ar = t(-3.0, 1.0), t(-4.0, 0.5), t(-3.5, 0.0), t(-4.0, 2.0)
    soft, _ = dno_loss(pc, pr, ac, ar, t(30.0, 30.0), t(-30.0, -30.0), eta=0.5)
    hard, _ = dpo_loss(pc, pr, ac, ar, beta=0.5)
    torch.testing.assert_close(soft, hard, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------------------
# INPO and MNPO
# ------------------------------------------------------------------------------------------------------------
def test_inpo_round_one_is_ipo_on_summed_logps_and_starts_at_10000():
    # pi_t = pi_ref: h = rho(y_w) - rho(y_l); eta = 0.005 at pi = pi_ref: (0 - 1/0.01)^2 = 10,000
    zero = t(0.0)
    losses, _ = inpo_loss(zero, zero, zero, zero, zero, zero, eta=0.005)
    torch.testing.assert_close(losses, t(10_000.0), rtol=1e-12, atol=0)
    pc, pr, rc, rr = t(-3.0, 1.0), t(-4.0, 0.5), t(-3.5, 0.0), t(-4.0, 2.0)
    losses, _ = inpo_loss(pc, pr, rc, rr, rc, rr, eta=0.05, tau=0.01)
    torch.testing.assert_close(losses, ((pc - rc) - (pr - rr) - 10.0) ** 2, rtol=1e-12, atol=0)


def test_inpo_mixes_its_two_anchors_and_has_the_written_gradient():
    # tau = 0 reads pi_t only (pi_ref may be anything); tau = eta reads pi_ref only
    pc, pr = t(-3.0, 1.0, grad=True), t(-4.0, 0.5, grad=True)
    rc, rr, ac, ar = t(-3.5, 0.0), t(-4.0, 2.0), t(-2.0, 3.0), t(-6.0, 1.0)
    a, _ = inpo_loss(pc, pr, rc, rr, ac, ar, eta=0.1, tau=0.0)
    b, _ = inpo_loss(pc, pr, rc + 7, rr - 3, ac, ar, eta=0.1, tau=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, _ = inpo_loss(pc, pr, rc, rr, ac + 7, ar - 3, eta=0.1, tau=0.1)
    d, _ = inpo_loss(pc, pr, rc, rr, ac, ar, eta=0.1, tau=0.1)
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    # d loss / d S(y_w) = 2 (h - 1/(2 eta)) = - d loss / d S(y_l), h with the (tau/eta, 1 - tau/eta) mixture
    eta, tau = 0.1, 0.03
    losses, _ = inpo_loss(pc, pr, rc, rr, ac, ar, eta=eta, tau=tau)
    gc, gr = torch.autograd.grad(losses.sum(), (pc, pr))
    h = (pc - pr) - tau / eta * (rc - rr) - (1 - tau / eta) * (ac - ar)
    torch.testing.assert_close(gc, 2 * (h - 1 / (2 * eta)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gr, -gc, rtol=0, atol=0)


def test_mnpo_with_one_opponent_is_inpo_and_starts_at_4444():
    pc, pr, rc, rr = t(-3.0, 1.0), t(-4.0, 0.5), t(-3.5, 0.0), t(-4.0, 2.0)
    ac, ar = t(-2.0, 3.0), t(-6.0, 1.0)
    m, _ = mnpo_loss(pc, pr, rc, rr, ac.view(1, 2), ar.view(1, 2), eta=0.1, ratio=0.25)
    i, _ = inpo_loss(pc, pr, rc, rr, ac, ar, eta=0.1, tau=0.025)
    torch.testing.assert_close(m, i, rtol=0, atol=0)
    zero = t(0.0)
    losses, _ = mnpo_loss(zero, zero, zero, zero, t(0.0, 0.0).view(2, 1), t(0.0, 0.0).view(2, 1), eta=0.0075)
    torch.testing.assert_close(losses, t((1 / 0.015) ** 2), rtol=1e-12, atol=0)   # 66.67^2 = 4444.4


def test_mnpo_weighs_its_opponents():
    # opponents pi_t, pi_{t-1} with weights (3, 1) -> (3/4, 1/4): one opponent at 3/4 S_t + 1/4 S_{t-1}
    pc, pr, rc, rr = t(-3.0, 1.0), t(-4.0, 0.5), t(-3.5, 0.0), t(-4.0, 2.0)
    hc, hr = t(-2.0, 3.0, -1.0, 5.0).view(2, 2), t(-6.0, 1.0, -2.0, 0.0).view(2, 2)
    m, _ = mnpo_loss(pc, pr, rc, rr, hc, hr, eta=0.1, ratio=0.5, weights=[3.0, 1.0])
    one, _ = mnpo_loss(pc, pr, rc, rr, (0.75 * hc[0] + 0.25 * hc[1]).view(1, 2),
                       (0.75 * hr[0] + 0.25 * hr[1]).view(1, 2), eta=0.1, ratio=0.5)
    torch.testing.assert_close(m, one, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Online IPO (EGPO's loss)
# ------------------------------------------------------------------------------------------------------------
def test_online_ipo_sanity_value_stationary_point_and_gradient():
    zero = t(0.0)
    logit = lambda p: torch.logit(torch.as_tensor(p, dtype=torch.float64))           # noqa: E731
    # a Bradley-Terry annotator: P(y_w > y_l) = sigmoid(r_w - r_l) = 0.7
    losses, metrics = online_ipo_loss(zero, zero, zero, zero, logit(0.7).view(1), zero, beta=0.1)
    torch.testing.assert_close(losses, t(4.0), rtol=1e-12, atol=0)                 # (0.2 / 0.1)^2
    torch.testing.assert_close(metrics["preference"], t(0.7), rtol=1e-12, atol=0)
    h = t(2.0, 5.0, -1.0, grad=True)
    P = t(0.7, 1.0, 0.3)
    losses, _ = online_ipo_loss(h, t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0), t(0.0, 0.0, 0.0), logit(P), t(0.0, 0.0, 0.0),
                                beta=0.1)
    (g,) = torch.autograd.grad(losses.sum(), h)
    torch.testing.assert_close(g, 2 * (h - (P - 0.5) / 0.1), rtol=1e-12, atol=1e-12)
    assert abs(g[0].item()) < 1e-14 and abs(g[1].item()) < 1e-14                  # h = 2, and IPO's 1/(2 beta) = 5


# ------------------------------------------------------------------------------------------------------------
# APO, accelerated (Nesterov-extrapolated reference)
# ------------------------------------------------------------------------------------------------------------
def test_accelerated_dpo_sanity_value_reductions_and_gradient():
    # S_hat = 1.3 (-50) - 0.3 (-52) = -49.4 on y_w; y_l's anchors equal (S_hat = S_t there): loss = DPO against -49.4
    pc, pr = t(-45.0, grad=True), t(-60.0, grad=True)
    losses, _ = accelerated_dpo_loss(pc, pr, t(-50.0), t(-61.0), t(-52.0), t(-61.0), beta=0.1, alpha=0.3)
    u = 0.1 * ((-45.0 + 49.4) - (-60.0 + 61.0))                                # 0.1 (4.4 - 1) = 0.34
    torch.testing.assert_close(losses, t(math.log(1 + math.exp(-0.34))), rtol=1e-12, atol=1e-12)   # 0.5432...
    (gw, gl) = torch.autograd.grad(losses.sum(), (pc, pr))
    torch.testing.assert_close(gw, t(-0.1 / (1 + math.exp(u))), rtol=1e-12, atol=1e-12)           # -beta sigmoid(-u)
    torch.testing.assert_close(gl, -gw)
    # alpha = 0 is DPO against pi_t, whatever pi_{t-1} is; pi_{t-1} = pi_t is DPO against pi_t for every alpha
    g = torch.Generator().manual_seed(3)
    S = [-torch.rand(6, generator=g, dtype=torch.float64) * 40 for _ in range(6)]
    dpo, _ = dpo_loss(S[0], S[1], S[2], S[3], beta=0.2)
    a0, _ = accelerated_dpo_loss(S[0], S[1], S[2], S[3], S[4], S[5], beta=0.2, alpha=0.0)
    same, _ = accelerated_dpo_loss(S[0], S[1], S[2], S[3], S[2], S[3], beta=0.2, alpha=0.7)
    torch.testing.assert_close(a0, dpo, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(same, dpo, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# OFS-DPO: two modules, the one ahead chased by the other
# ------------------------------------------------------------------------------------------------------------
def test_ofs_dpo_starts_at_two_ln2_and_has_the_written_gradients():
    zero = t(0.0, 0.0)
    losses, metrics = ofs_dpo_loss(zero, zero, zero, zero, zero, zero, beta=0.1, alpha=0.5)
    torch.testing.assert_close(losses, t(2 * LN2, 2 * LN2), rtol=1e-12, atol=1e-12)
    # Delta_A = 0.1 (S_w^A - S_l^A) etc. against a zero reference; A leads (no running means yet)
    a_w, a_l, b_w, b_l = t(-3.0, 1.0, grad=True), t(-5.0, 2.0, grad=True), t(-4.0, 0.5, grad=True), t(-4.5, 1.0, grad=True)
    losses, metrics = ofs_dpo_loss(a_w, a_l, t(0.0, 0.0), t(0.0, 0.0), b_w, b_l, beta=0.1, alpha=0.5)
    d_a, d_b = 0.1 * (a_w - a_l).detach(), 0.1 * (b_w - b_l).detach()
    sig = torch.sigmoid
    # value: the two DPO losses (the chase bracket is 0 in value)
    torch.testing.assert_close(losses, -torch.log(sig(d_a)) - torch.log(sig(d_b)), rtol=1e-12, atol=1e-12)
    g_aw, g_bw = torch.autograd.grad(losses.sum(), (a_w, b_w))
    # d loss / d Delta_F = -sigmoid(-Delta_F) - alpha sigmoid(-(Delta_F - Delta_S)); the same form for Delta_S
    torch.testing.assert_close(g_aw, 0.1 * (-sig(-d_a) - 0.5 * sig(-(d_a - d_b))), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_bw, 0.1 * (-sig(-d_b) - 0.5 * sig(-(d_a - d_b))), rtol=1e-12, atol=1e-12)
    assert metrics["fast_leads"].tolist() == [1.0, 1.0]


def test_ofs_dpo_roles_follow_the_running_losses():
    a_w, a_l, b_w, b_l = t(-3.0, grad=True), t(-5.0, grad=True), t(-4.0, grad=True), t(-4.5, grad=True)
    z = t(0.0)
    # B has the lower running DPO loss: B plays F, A plays S; the chase then uses Delta_B - Delta_A
    losses, metrics = ofs_dpo_loss(a_w, a_l, z, z, b_w, b_l, beta=0.1, alpha=0.5, fast_dpo_mean=0.7, slow_dpo_mean=0.6)
    d_a, d_b = 0.1 * 2.0, 0.1 * 0.5
    g_aw, g_bw = torch.autograd.grad(losses.sum(), (a_w, b_w))
    s = lambda x: 1 / (1 + math.exp(-x))                                          # noqa: E731
    assert g_aw.item() == pytest.approx(0.1 * (-s(-d_a) - 0.5 * s(-(d_b - d_a))), abs=1e-12)
    assert g_bw.item() == pytest.approx(0.1 * (-s(-d_b) - 0.5 * s(-(d_b - d_a))), abs=1e-12)
    assert metrics["fast_leads"].item() == 0.0
    # alpha = 0: two independent DPO losses
    a0, _ = ofs_dpo_loss(a_w, a_l, z, z, b_w, b_l, beta=0.1, alpha=0.0)
    torch.testing.assert_close(a0, dpo_loss(a_w, a_l, z, z, beta=0.1)[0] + dpo_loss(b_w, b_l, z, z, beta=0.1)[0])
