"""Tests of reward distillation (Fisch et al.), e-DPO, p-DPO and DRDO (its Oracle loss, the focal term, the
student loss and its full gradient) in losses.py, and a tabular toy where implicit-reward DRDO settles a tied
pair that DPO does not.

Conventions: values worked out by hand have the arithmetic in a comment above the assert; softplus(1) =
log(1 + e) = 1.313262, softplus(-1) = log(1 + 1/e) = 0.313262, log 2 = 0.693147. Gradient checks use float64.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import (distill_loss, dpo_loss, drdo_loss, edpo_loss, focal_preference_loss, log1mexp, oracle_loss,
                    pdpo_loss)
from loss_test_helpers import LN2, grad_wrt, margin_inputs, t


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
