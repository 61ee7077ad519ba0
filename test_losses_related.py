"""The offline losses of DRDO's related-work list and TRL 1.16's DPO options (losses.py, issue 24): LD-DPO and its
tail log-probs, TRL's sigmoid_norm, AOT (paired and unpaired), MADPO, ADPO, ASFT, MODPO; and softplus exact where
torch's F.softplus is not. Each against hand-computed values (the arithmetic in a comment), a closed form or a
reduction to a loss tested elsewhere, and autograd against the gradient written above the function.
"""
import math

import torch

import losses as L
from loss_test_helpers import LN2, t
from losses import (adpo_loss, aot_loss, aot_unpaired_loss, asft_loss, cdpo_loss, cpo_loss, dpo_loss, ld_dpo_loss,
                    madpo_loss, madpo_weights, modpo_loss, sequence_logps, sequence_tail_logps, simpo_loss,
                    sequence_weighted_logps, tgdpo_loss, tpo_l_loss, tpo_loss)


def sp(x):
    """softplus written out: log(1 + e^x) (moderate x only)."""
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------------------------
# softplus: exact where F.softplus switches to the identity
# ------------------------------------------------------------------------------------------------------------
def test_softplus_is_exact_above_torchs_threshold():
    # softplus(25) = 25 + log1p(e^-25) = 25 + 1.3888e-11; F.softplus returns 25.0 (its threshold is 20)
    u = t(25.0, 40.0, -30.0)
    exact = t(25.0 + math.log1p(math.exp(-25.0)), 40.0 + math.log1p(math.exp(-40.0)), math.log1p(math.exp(-30.0)))
    torch.testing.assert_close(L.softplus(u), exact, rtol=0, atol=1e-15)
    # DPO at beta * h = -25: the loss is softplus(25), to the last bit (a loss on F.softplus is 1.4e-11 off)
    losses, _ = dpo_loss(t(-250.0), t(0.0), t(0.0), t(0.0), beta=0.1)
    torch.testing.assert_close(losses, exact[:1], rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------------------------------
# LD-DPO
# ------------------------------------------------------------------------------------------------------------
def test_ld_dpo_the_sanity_example_and_alpha_one_is_dpo():
    # |y_w| = 60 (S = -30, no tail), |y_l| = 100: first 60 tokens -40, last 40 -60 (S = -100, T = -60).
    # reference: S_ref = -30 / -100 with the same split, but shifted: chosen -35, rejected -90 with tail -50.
    # alpha 0.5: S_a(y_l) = -40 + 0.5 (-60) = -70; S_a,ref(y_l) = -40 + 0.5 (-50) = -65 (its first 60: -40)
    #   h_a = (-30 - -35) - (-70 - -65) = 5 + 5 = 10 -> loss = softplus(-0.1 * 10) = softplus(-1)
    args = (t(-30.0), t(-100.0), t(-35.0), t(-90.0), t(0.0), t(-60.0), t(0.0), t(-50.0))
    losses, metrics = ld_dpo_loss(*args, beta=0.1, alpha=0.5)
    torch.testing.assert_close(losses, t(sp(-1.0)))
    torch.testing.assert_close(metrics["rejected_rewards"], t(0.1 * (-70.0 + 65.0)))
    # alpha = 1: DPO exactly, whatever the tails
    dpo, _ = dpo_loss(*args[:4], beta=0.1)
    torch.testing.assert_close(ld_dpo_loss(*args, beta=0.1, alpha=1.0)[0], dpo, rtol=0, atol=0)
    # alpha = 0: only the shared 60 tokens count: h = (-30 + 35) - (-40 + 40) = 5 -> softplus(-0.5)
    torch.testing.assert_close(ld_dpo_loss(*args, beta=0.1, alpha=0.0)[0], t(sp(-0.5)))


def test_ld_dpo_gradient_the_tail_gets_alpha_times_the_shared_tokens_pull():
    beta, alpha = 0.3, 0.25
    S_w, S_l, T_w, T_l = (t(v, grad=True) for v in (-12.0, -20.0, -2.0, -7.0))
    ref = (t(-11.0), t(-18.0), t(-1.0), t(-5.0))
    losses, _ = ld_dpo_loss(S_w, S_l, ref[0], ref[1], T_w, T_l, ref[2], ref[3], beta=beta, alpha=alpha)
    grads = torch.autograd.grad(losses.sum(), (S_w, S_l, T_w, T_l))
    h = ((-12 + 0.75 * 2) - (-11 + 0.75 * 1)) - ((-20 + 0.75 * 7) - (-18 + 0.75 * 5))
    g = -beta * (1 / (1 + math.exp(beta * h)))                 # d loss / d S(y_w) = -beta sigmoid(-beta h_a)
    torch.testing.assert_close(torch.cat(grads), t(g, -g, -(1 - alpha) * g, (1 - alpha) * g))


def logits_from_probs(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_sequence_tail_logps_by_hand_in_both_layouts():
    # V = 3; pair 0: chosen completion 3 tokens, rejected 1 -> l_p = 1: chosen's last 2 tokens are its tail
    A, Bq, C = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]
    logits = logits_from_probs([[A, Bq, C, A],        # chosen:   prompt [0], completion [1, 2, 0]
                                [A, A, C, Bq]])       # rejected: prompt [2, 1], completion [2], pad
    labels = torch.tensor([[0, 1, 2, 0], [2, 1, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    # chosen tokens 2 (predicted by Bq: 0.25) and 0 (by C: 0.1) are past l_p = 1; the rejected has no tail
    expected = t(math.log(0.25) + math.log(0.1), 0.0)
    torch.testing.assert_close(sequence_tail_logps(logits, labels, mask), expected)
    # the packed layout: logits only at the positions that predict a completion token (row-major)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()
    torch.testing.assert_close(sequence_tail_logps(logits[keep], labels, mask), expected)
    # and the shared part is the rest: S - T = the first l_p tokens
    torch.testing.assert_close(sequence_logps(logits, labels, mask) - expected,
                               t(math.log(0.25), math.log(0.25)))


# ------------------------------------------------------------------------------------------------------------
# TRL's sigmoid_norm is dpo on averaged log-probs
# ------------------------------------------------------------------------------------------------------------
def test_sigmoid_norm_is_dpo_on_length_normalised_log_ratios():
    # TRL: -logsigmoid(beta * [(S_w - S_ref,w)/|y_w| - (S_l - S_ref,l)/|y_l|]); |y_w| = 4, |y_l| = 8
    info = L.LOSSES["sigmoid_norm"]
    assert info.fn is dpo_loss and info.average_logps and info.inputs == ("policy", "reference")
    S = (t(-8.0), t(-24.0), t(-10.0), t(-20.0))
    n_w, n_l = 4.0, 8.0
    trl = sp(-0.5 * ((-8.0 + 10.0) / n_w - (-24.0 + 20.0) / n_l))            # softplus(-0.5 * (0.5 + 0.5))
    ours, _ = info.fn(S[0] / n_w, S[1] / n_l, S[2] / n_w, S[3] / n_l, beta=0.5)
    torch.testing.assert_close(ours, t(trl))


# ------------------------------------------------------------------------------------------------------------
# AOT
# ------------------------------------------------------------------------------------------------------------
def test_aot_unpaired_sorts_chosen_and_rejected_separately():
    # rho_w = (1, -2), rho_l = (0, 3), beta = 1: sorted (-2, 1) - (0, 3) = (-2, -2) -> softplus(2) each
    z = t(0.0, 0.0)
    losses, _ = aot_unpaired_loss(t(1.0, -2.0), t(0.0, 3.0), z, z, beta=1.0)
    torch.testing.assert_close(losses, t(sp(2.0), sp(2.0)))
    torch.testing.assert_close(losses, t(2.126928011042973, 2.126928011042973))
    # per-pair DPO on the same inputs: (softplus(-1), softplus(5))
    torch.testing.assert_close(dpo_loss(t(1.0, -2.0), t(0.0, 3.0), z, z, beta=1.0)[0], t(sp(-1.0), sp(5.0)))
    # neither side in order: rho_w = (1, -2) -> (-2, 1), rho_l = (3, -1) -> (-1, 3): d = (-1, -2)
    losses, _ = aot_unpaired_loss(t(1.0, -2.0), t(3.0, -1.0), z, z, beta=1.0)
    torch.testing.assert_close(losses, t(sp(1.0), sp(2.0)))


def test_aot_paired_sorts_policy_and_reference_margins_with_label_smoothing():
    # policy margins S_w - S_l = (3, -1), reference margins (2, 0): sorted (-1, 3) - (0, 2) = (-1, 1)
    # eps = 0.1, beta = 1: loss_i = 0.9 softplus(-d_i) + 0.1 softplus(d_i)
    losses, _ = aot_loss(t(3.0, -1.0), t(0.0, 0.0), t(2.0, 0.0), t(0.0, 0.0), beta=1.0, label_smoothing=0.1)
    torch.testing.assert_close(losses, t(0.9 * sp(1.0) + 0.1 * sp(-1.0), 0.9 * sp(-1.0) + 0.1 * sp(1.0)))


def test_aot_of_one_pair_is_dpo_and_its_gradient_reaches_the_entry_that_sorts_there():
    one = [t(v) for v in (-3.0, -7.0, -4.0, -5.0)]
    for fn in (aot_loss, aot_unpaired_loss):
        torch.testing.assert_close(fn(*one, beta=0.2)[0], dpo_loss(*one, beta=0.2)[0])
    # unpaired, beta = 1: rho_w = (2, -1) sorts to (-1, 2): place 0 holds pair 1's chosen; rho_l = (0, 0)
    # d = (-1, 2): d loss_0 / d rho_w[1] = -sigmoid(1), d loss_1 / d rho_w[0] = -sigmoid(-2)
    pc = t(2.0, -1.0, grad=True)
    losses, _ = aot_unpaired_loss(pc, t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=1.0)
    (g,) = torch.autograd.grad(losses.sum(), pc)
    sig = lambda x: 1 / (1 + math.exp(-x))                                         # noqa: E731
    torch.testing.assert_close(g, t(-sig(-2.0), -sig(1.0)))


# ------------------------------------------------------------------------------------------------------------
# MADPO
# ------------------------------------------------------------------------------------------------------------
def test_madpo_weights_table():
    # c(a) = 0.5 + 1.5 / (1 + 2 exp(a - ln 999)); w = sigmoid(c m) / sigmoid(m) for m > -ln 999
    # m = 1: c = 0.5 + 1.5 / (1 + 2/999 * e) = 1.991881, w = sigmoid(1.991881) / sigmoid(1) = 0.879932 / 0.731059
    c1 = 0.5 + 1.5 / (1 + 2 * math.e / 999)
    sig = lambda x: 1 / (1 + math.exp(-x))                                         # noqa: E731
    w = madpo_weights(t(0.0, 1.0, -1.0, 10.0, -8.0))
    torch.testing.assert_close(w, t(1.0, sig(c1 * 1) / sig(1), sig(-c1) / sig(-1),
                                    sig(10 * (0.5 + 1.5 / (1 + 2 * math.exp(10) / 999))) / sig(10), 1.0))
    torch.testing.assert_close(w[1:4], t(1.2036546, 0.4464094, 0.9952370), atol=1e-7, rtol=0)
    # c(tau) = 1: at |m| = ln 999 the weight is exactly 1
    torch.testing.assert_close(madpo_weights(t(math.log(999.0))), t(1.0))


def test_madpo_loss_is_the_weighted_dpo_loss_and_its_gradient():
    pc = t(-4.0, -9.0, grad=True)
    args = (pc, t(-6.0, -8.0), t(-5.0, -7.0), t(-5.0, -7.0), t(1.0, 0.0), t(0.0, 1.0))
    losses, metrics = madpo_loss(*args, beta=0.5)
    w = madpo_weights(t(1.0, -1.0))
    h = t(2.0, -1.0)                                                                 # (-4 + 5) - (-6 + 5), ...
    torch.testing.assert_close(losses, w * L.softplus(-0.5 * h))
    torch.testing.assert_close(metrics["madpo_weight"], w)
    (g,) = torch.autograd.grad(losses.sum(), pc)
    torch.testing.assert_close(g, -w * 0.5 * torch.sigmoid(-0.5 * h))                # -w beta sigmoid(-beta h)


# ------------------------------------------------------------------------------------------------------------
# ADPO (pairwise)
# ------------------------------------------------------------------------------------------------------------
def test_adpo_log2_at_the_start_its_finite_optimum_and_gradient():
    z = t(0.0)
    for dR in (-2.0, 0.0, 3.0):                                                   # h = 0: log 2 for every q
        torch.testing.assert_close(adpo_loss(z, z, z, z, t(dR), z, beta=0.7)[0], t(LN2))
    # q = sigmoid(dR / T) = 0.8 with T = 1 -> optimum beta h* = log 4: zero gradient there
    dR = math.log(4.0)
    pc = t(math.log(4.0) / 0.5, grad=True)                                        # h = log 4 / beta, beta = 0.5
    losses, metrics = adpo_loss(pc, z, z, z, t(dR), z, beta=0.5, temperature=1.0)
    torch.testing.assert_close(metrics["adpo_target"], t(0.8))
    (g,) = torch.autograd.grad(losses.sum(), pc)
    torch.testing.assert_close(g, t(0.0), atol=1e-15, rtol=0)
    # away from it: d loss / d h = beta (sigmoid(beta h) - q)
    pc = t(1.0, grad=True)
    (g,) = torch.autograd.grad(adpo_loss(pc, z, z, z, t(dR), z, beta=0.5)[0].sum(), pc)
    torch.testing.assert_close(g, t(0.5 * (1 / (1 + math.exp(-0.5)) - 0.8)))


def test_adpo_reduces_to_cdpo_and_dpo():
    pc, pr, rc, rr = t(-3.0, -1.0), t(-5.0, -2.0), t(-4.0, -1.5), t(-4.5, -1.0)
    eps, T = 0.1, 2.0
    dR = T * math.log((1 - eps) / eps)                                            # sigmoid(dR / T) = 1 - eps
    adpo, _ = adpo_loss(pc, pr, rc, rr, t(dR, dR), t(0.0, 0.0), beta=0.3, temperature=T)
    torch.testing.assert_close(adpo, cdpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=eps)[0])
    huge = adpo_loss(pc, pr, rc, rr, t(1e4, 1e4), t(0.0, 0.0), beta=0.3)[0]       # q = 1
    torch.testing.assert_close(huge, dpo_loss(pc, pr, rc, rr, beta=0.3)[0])


# ------------------------------------------------------------------------------------------------------------
# ASFT
# ------------------------------------------------------------------------------------------------------------
def test_asft_sanity_value_and_gradient():
    # p_w = p_l = 0.5, lambda = 0.1: 1.1 log 2 + 0.1 log 2 = 0.831777
    half = t(math.log(0.5))
    torch.testing.assert_close(asft_loss(half, half, lam=0.1)[0], t(1.2 * LN2))
    torch.testing.assert_close(asft_loss(half, half, lam=0.1)[0], t(0.8317766166719343))
    # d / d Sbar_w = -(1 + lambda); d / d Sbar_l = lambda p_l / (1 - p_l): p_l = 0.2, lambda 0.4 -> 0.1
    aw, al = t(math.log(0.7), grad=True), t(math.log(0.2), grad=True)
    grads = torch.autograd.grad(asft_loss(aw, al, lam=0.4)[0].sum(), (aw, al))
    torch.testing.assert_close(torch.cat(grads), t(-1.4, 0.4 * 0.2 / 0.8))


# ------------------------------------------------------------------------------------------------------------
# MODPO
# ------------------------------------------------------------------------------------------------------------
def test_modpo_sanity_value_reduction_and_gradient():
    z = t(0.0)
    # w0 = w1 = 0.5, dr_1 = 1, h = 0: logit = (0 - 0.5) / 0.5 = -1 -> softplus(1) = 1.313262
    torch.testing.assert_close(modpo_loss(z, z, z, z, t(1.0), t(0.0), beta=0.1, w0=0.5)[0], t(sp(1.0)))
    torch.testing.assert_close(modpo_loss(z, z, z, z, t(1.0), t(0.0), beta=0.1, w0=0.5)[0], t(1.3132616875182228))
    # w0 = 1: DPO, whatever the second objective says
    four = (t(-3.0), t(-5.0), t(-4.0), t(-4.5))
    torch.testing.assert_close(modpo_loss(*four, t(-20.0), t(-5.0), beta=0.3, w0=1.0)[0],
                               dpo_loss(*four, beta=0.3)[0], rtol=0, atol=0)
    # d loss / d h = -(beta / w0) sigmoid(-(beta h - w1 dr1) / w0); brevity: y_w 12 tokens, y_l 20 -> dr1 = 8
    pc = t(-3.0, grad=True)
    losses, _ = modpo_loss(pc, *four[1:], t(-12.0), t(-20.0), beta=0.3, w0=0.8)
    (g,) = torch.autograd.grad(losses.sum(), pc)
    h = (-3.0 + 4.0) - (-5.0 + 4.5)
    logit = (0.3 * h - 0.2 * 8.0) / 0.8
    torch.testing.assert_close(g, t(-(0.3 / 0.8) / (1 + math.exp(logit))))


# ------------------------------------------------------------------------------------------------------------
# TPO
# ------------------------------------------------------------------------------------------------------------
def test_tpo_sanity_value_reductions_and_gradient():
    # beta = 0.01, S_w = -120, S_l = -150: softplus(-0.3) = 0.554355; gold Sbar = -2 with alpha 0.5 adds 1
    losses, metrics = tpo_loss(t(-120.0), t(-150.0), t(-2.0), t(-20.0), beta=0.01, alpha=0.5)
    torch.testing.assert_close(losses, t(sp(-0.3) + 1.0))
    torch.testing.assert_close(losses, t(0.5543552444685271 + 1.0))
    torch.testing.assert_close(metrics["nll_loss"], t(2.0))
    # alpha = 0: CPO without its NLL (reference-free DPO); TPO-L with alpha = 0: SimPO
    pc, pr = t(-12.0, -3.0), t(-15.0, -2.0)
    torch.testing.assert_close(tpo_loss(pc, pr, t(-1.0, -1.0), t(-9.0, -9.0), beta=0.2, alpha=0.0)[0],
                               cpo_loss(pc, pr, beta=0.2, alpha=0.0)[0])
    ac, ar = t(-1.2, -0.3), t(-1.5, -0.2)
    torch.testing.assert_close(tpo_l_loss(ac, ar, t(-1.0, -1.0), t(-9.0, -9.0), beta=2.0, gamma=0.5, alpha=0.0)[0],
                               simpo_loss(ac, ar, beta=2.0, gamma=0.5)[0])
    # d / d Sbar(y_g) = -alpha; d / d S(y_w) = -beta sigmoid(-beta (S_w - S_l))
    sw, g = t(-120.0, grad=True), t(-2.0, grad=True)
    grads = torch.autograd.grad(tpo_loss(sw, t(-150.0), g, t(-20.0), beta=0.01, alpha=0.5)[0].sum(), (sw, g))
    torch.testing.assert_close(torch.cat(grads), t(-0.01 / (1 + math.exp(0.3)), -0.5))


# ------------------------------------------------------------------------------------------------------------
# TGDPO
# ------------------------------------------------------------------------------------------------------------
def test_tgdpo_token_weights_by_hand_and_g_zero_is_dpo():
    # one token per response: log pi(y_w) = -1, log pi_ref(y_w) = -2 (rho_w = 1); log pi(y_l) = -3, ref -2.5
    # (rho_l = -0.5); g_w = g_l = 2, alpha 0.5, beta 0.1: weights 1 + 0.1 = 1.1 (chosen), 1 - 0.1 = 0.9 (rejected)
    # z = 0.1 * (1.1 * 1 - 0.9 * (-0.5)) = 0.155;  G = g * log pi, G_ref = g * log pi_ref
    S = (t(-1.0), t(-3.0), t(-2.0), t(-2.5))
    G = (t(2 * -1.0), t(2 * -3.0), t(2 * -2.0), t(2 * -2.5))
    losses, metrics = tgdpo_loss(*S, *G, beta=0.1, alpha=0.5)
    torch.testing.assert_close(metrics["pref_logit"], t(0.155))
    torch.testing.assert_close(losses, t(sp(-0.155)))
    zero = t(0.0)
    torch.testing.assert_close(tgdpo_loss(*S, zero, zero, zero, zero, beta=0.1, alpha=0.5)[0],
                               dpo_loss(*S, beta=0.1)[0], rtol=0, atol=0)
    # gradient: d loss / d log pi(y_w token) = -beta sigmoid(-z) * 1.1 through S and G together
    lp_w = t(-1.0, grad=True)
    losses, _ = tgdpo_loss(lp_w, S[1], S[2], S[3], 2 * lp_w, G[1], G[2], G[3], beta=0.1, alpha=0.5)
    (g,) = torch.autograd.grad(losses.sum(), lp_w)
    torch.testing.assert_close(g, t(-0.1 * 1.1 / (1 + math.exp(0.155))))


def test_sequence_weighted_logps_by_hand_in_both_layouts():
    A, Bq, C = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]
    logits = torch.log(torch.tensor([[A, Bq, C, A], [A, A, C, Bq]], dtype=torch.float64))
    labels = torch.tensor([[0, 1, 2, 0], [2, 1, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    # the weight of the token AT each position: row 0 tokens 1, 2, 0 at positions 1-3 weigh 2, 0, -1
    w = torch.tensor([[9.0, 2.0, 0.0, -1.0], [9.0, 9.0, 3.0, 9.0]])     # 9: prompt / padding, never read
    expected = t(2 * math.log(0.25) + 0 * math.log(0.25) - 1 * math.log(0.1), 3 * math.log(0.25))
    torch.testing.assert_close(sequence_weighted_logps(logits, labels, mask, w), expected)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()
    torch.testing.assert_close(sequence_weighted_logps(logits[keep], labels, mask, w), expected)
    torch.testing.assert_close(sequence_weighted_logps(logits, labels, mask, torch.ones(2, 4)),
                               sequence_logps(logits, labels, mask))


# ------------------------------------------------------------------------------------------------------------
# BRAIn (function only)
# ------------------------------------------------------------------------------------------------------------
def test_brain_log_n_at_the_start_reductions_optimum_and_gradient():
    from losses import brain_loss
    # rho = 0 (policy = pi_ref = q): b uniform, loss = log n whatever the rewards
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    losses, _ = brain_loss(zeros, zeros, torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(losses, t(math.log(3), math.log(3)))
    # n = 2, hard target (reward gap huge), q = pi_ref: -log sigmoid(rho_1 - rho_2), DPO with beta = 1
    S, Sref = torch.tensor([[-3.0, -5.0]], dtype=torch.float64), torch.tensor([[-4.0, -4.5]], dtype=torch.float64)
    hard, _ = brain_loss(S, Sref, torch.tensor([[1e4, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(hard, dpo_loss(S[:, 0], S[:, 1], Sref[:, 0], Sref[:, 1], beta=1.0)[0])
    # n = 2, soft target: adpo with beta 1 and temperature = BRAIn's beta
    soft, metrics = brain_loss(S, Sref, torch.tensor([[1.0, 0.0]], dtype=torch.float64), beta=0.5)
    torch.testing.assert_close(soft, adpo_loss(S[:, 0], S[:, 1], Sref[:, 0], Sref[:, 1], t(1.0), t(0.0), beta=1.0,
                                               temperature=0.5)[0])
    # target alpha_1 = sigmoid(1 / 0.5); b_1 = sigmoid(rho_1 - rho_2) = sigmoid(1 - (-0.5)) = sigmoid(1.5)
    sig = lambda x: 1 / (1 + math.exp(-x))                                         # noqa: E731
    torch.testing.assert_close(metrics["brain_match"], t(sig(2.0) * sig(1.5) + sig(-2.0) * sig(-1.5)))
    torch.testing.assert_close(metrics["chosen_rewards"], t(1.0))                    # rho of the target's favourite
    # optimum rho_1 - rho_2 = (r_1 - r_2) / beta = 1 (r = (1, 0), beta = 1): zero gradient; elsewhere b - alpha
    pc = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(brain_loss(pc, torch.zeros(1, 2, dtype=torch.float64),
                                          torch.tensor([[1.0, 0.0]], dtype=torch.float64))[0].sum(), pc)
    torch.testing.assert_close(g, torch.zeros(1, 2, dtype=torch.float64), atol=1e-15, rtol=0)
    pc = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    (g,) = torch.autograd.grad(brain_loss(pc, torch.zeros(1, 3, dtype=torch.float64), r)[0].sum(), pc)
    torch.testing.assert_close(g, torch.full((1, 3), 1 / 3, dtype=torch.float64) - torch.softmax(r, -1))


def test_brain_proposal_other_than_pi_ref_reweights_the_target():
    from losses import brain_loss
    # candidates from a proposal q that over-samples candidate 0 by e^1: the target weights divide it out
    S = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    Sref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, -1.0]], dtype=torch.float64)
    losses, _ = brain_loss(S, Sref, torch.zeros(1, 2, dtype=torch.float64), q)
    # alpha = softmax(0 + S_ref - log q) = softmax(-1, 0); b = softmax(S - log q) = softmax(0, 1); grad = b - alpha
    alpha = torch.softmax(torch.tensor([[-1.0, 0.0]], dtype=torch.float64), -1)
    b = torch.softmax(torch.tensor([[0.0, 1.0]], dtype=torch.float64), -1)
    torch.testing.assert_close(losses, -(alpha * b.log()).sum(-1))
    (g,) = torch.autograd.grad(losses.sum(), S)
    torch.testing.assert_close(g, b - alpha)
