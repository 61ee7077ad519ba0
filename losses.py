"""Preference-optimization losses as pure functions of per-sequence log-probs.

What is here
    sequence_logps        the one place where token logits become sequence log-probs
    log1mexp              log(1 - exp(s)), stable; used by ORPO and DRDO
    dpo_loss, cdpo_loss, rdpo_loss, ipo_loss, hinge_loss      the DPO family (need pi_ref)
    simpo_loss, orpo_loss                                     reference-free baselines
    distill_loss, edpo_loss, pdpo_loss                        Fisch et al., arXiv 2405.19316 (v2)
    oracle_loss                                               DRDO phase 1, the Oracle (Eq. 6, reconstructed)
    focal_preference_loss, drdo_loss                          DRDO phase 2, the student (Eq. 7, reconstructed)
    sft_loss                                                  NLL of the preferred response
    LOSSES                                                    method name -> function, inputs, hyper-parameters

Papers: DPO = Rafailov et al. arXiv 2305.18290; IPO = Azar et al. arXiv 2310.12036; cDPO = Mitchell's note
"A note on DPO with noisy preferences" (2023); rDPO = Chowdhury et al. arXiv 2403.00409; SLiC-HF = Zhao et
al. arXiv 2305.10425; SimPO = Meng et al. arXiv 2405.14734; ORPO = Hong et al. arXiv 2403.07691;
distillation / e-DPO / p-DPO = Fisch et al. arXiv 2405.19316 (v2); DRDO = Nath et al. arXiv 2410.08458 (v2).

Contract (every loss):
    * inputs are per-sequence tensors of shape (B,), B = number of preference pairs;
    * returns (losses, metrics): `losses` has shape (B,), one value per pair, NOT reduced (the caller takes
      the mean, or a weighted mean); `metrics` is a dict of detached (B,) tensors with at least
      `chosen_rewards` and `rejected_rewards` (the loss's own notion of reward), plus its diagnostics;
    * reference log-probs and Oracle rewards are treated as constants (detached inside), so a caller that
      forgets `torch.no_grad()` still cannot train the reference or the Oracle;
    * no model, no config object, no `.item()` inside: copy any function into your own trainer.
  Exception: `focal_preference_loss(z)` and `log1mexp(s)` are building blocks of a single tensor and return
  a single tensor.

Glossary (used in every comment below; plain-text math, no LaTeX in code):
    x              prompt;  y_w / y_l = preferred ("chosen") / dispreferred ("rejected") completion
    pi, pi_ref     trained policy and frozen reference (the SFT model)
    S(y)           summed completion log-prob  sum_t log pi(y_t | x, y_<t)   (prompt tokens excluded)
    Sbar(y)        token-averaged log-prob  S(y) / |y|            (always <= 0)
    S_ref(y)       the same under pi_ref
    rho(y)         log-ratio  S(y) - S_ref(y)
    h              pair log-ratio margin  rho(y_w) - rho(y_l)   (h_pi(y_w, y_l) in the IPO paper)
    R(x, y)        Oracle / teacher reward (frozen);  dR = R(x, y_w) - R(x, y_l)
    r(x, y)        the student's own reward;          dr = r(x, y_w) - r(x, y_l)
    sigmoid        logistic function;  softplus(u) = log(1 + e^u) = -log sigmoid(-u)
    beta           strength of the KL-to-reference constraint (1/beta scales rewards into log-ratios)
Shapes: B = pairs in the batch, T = sequence length in tokens, V = vocabulary size, K = ensemble members.

Deviations from the papers and reconstructed details (each one is also marked `NOTE` at the code):
    1. IPO is fed token-AVERAGED log-probs by the LOSSES registry (as TRL does); the IPO paper is silent.
    2. The e-DPO forward-KL term KL(pi_ref || pi) is estimated on the dataset's own responses, not on fresh
       samples from pi_ref (Fisch et al. allow both; offline, the dataset responses are what we have).
    3. e-DPO's "min over the ensemble" defaults to the member with the lowest mean loss on the batch
       ("batch_min"); per-example min and the mean are switches.
    4. The Oracle objective (DRDO Eq. 6) is reconstructed: BT loss + alpha * token-averaged NLL of y_w.
    5. The DRDO student objective (Eq. 7) is reconstructed: alpha weights the preference term, not the
       distillation term; the inner score z is a switch (default "unlikelihood" on averaged log-probs);
       the focal factor (1 - p)^gamma is differentiated through (not detached); the student reward is
       chosen by the caller (a reward head, or the policy's own log-probs).
    6. log1mexp clamps its input to <= -1e-6, so a sequence the policy predicts with certainty gets a
       large finite value (and zero gradient through the clamp) instead of an infinity.

Run `pytest -q test_losses.py` (a few seconds) to check every formula written here.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ============================================================================================================
# Sequence log-probs
# ============================================================================================================
def _logsumexp_fp32(logits):
    """logsumexp over the vocabulary in fp32, (B, T, V) -> (B, T), without a second (B, T, V) copy alive.

    fp32 logits: torch.logsumexp saves only its input (the logits, alive anyway) and its (B, T) output.
    bf16/fp16 logits: an fp32 copy is needed for accuracy; we make it one row at a time, and under
    activation checkpointing, so backward recomputes the row's copy instead of storing all B of them.
    """
    if logits.dtype in (torch.float32, torch.float64):
        return torch.logsumexp(logits, dim=-1)                                  # (B, T)

    def row_lse(row):                                                           # (T, V) -> (T,)
        return torch.logsumexp(row.float(), dim=-1)

    if torch.is_grad_enabled() and logits.requires_grad:
        rows = [checkpoint(row_lse, logits[i], use_reentrant=False) for i in range(logits.shape[0])]
    else:
        rows = [row_lse(logits[i]) for i in range(logits.shape[0])]
    return torch.stack(rows)                                                    # (B, T)


def sequence_logps(logits, labels, loss_mask, average=False):
    """Per-sequence log-prob of the completion tokens.

    Args:
        logits:    (B, T, V) output of a causal LM on `input_ids` (any float dtype).
        labels:    (B, T) token ids aligned with the input ids (usually the input ids themselves).
        loss_mask: (B, T) 1 on completion tokens, 0 on prompt and padding; aligned with the input ids.
        average:   False -> S(y), the SUM over completion tokens (DPO, IPO paper, distillation, e-DPO);
                   True  -> Sbar(y), the MEAN over completion tokens (SimPO, ORPO, DRDO; TRL's IPO).
    Returns:
        (B,) fp32 tensor (fp64 if the logits are fp64).

    Step by step:
      1) shift by one: the logit at position t predicts token t+1, so logits[:, :-1] is scored against
         labels[:, 1:] and the mask is shifted with the labels (the first token has no prediction);
      2) log pi(y_t) = logit[y_t] - logsumexp_v logit[v], in fp32 (this is log_softmax + gather, without
         materialising the (B, T, V) log-softmax);
      3) zero the prompt and padding positions, sum (or divide by the number of completion tokens).
    """
    if logits.shape[:2] != labels.shape or labels.shape != loss_mask.shape:
        raise ValueError(f"sequence_logps: logits {tuple(logits.shape)} must be (B, T, V) and labels "
                         f"{tuple(labels.shape)} / loss_mask {tuple(loss_mask.shape)} must both be (B, T)")
    logits = logits[:, :-1, :]                                                  # (B, T-1, V) step 1
    labels = labels[:, 1:]                                                      # (B, T-1)
    mask = loss_mask[:, 1:].to(torch.float32)                                   # (B, T-1)
    safe_labels = torch.where(mask > 0, labels, torch.zeros_like(labels))       # (B, T-1) no -100 in gather
    label_logits = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)     # (B, T-1)
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)            # fp32, or fp64 if given
    token_logps = label_logits.to(compute_dtype) - _logsumexp_fp32(logits)      # (B, T-1) step 2
    total = (token_logps * mask).sum(-1)                                        # (B,)    step 3
    if average:
        return total / completion_lengths(loss_mask).to(total.dtype)            # (B,)
    return total


def completion_lengths(loss_mask):
    """(B, T) loss mask -> (B,) number of scored completion tokens |y| (at least 1): Sbar = S / |y|.
    The first position has no prediction (step 1 of sequence_logps), so it is never counted."""
    return loss_mask[:, 1:].sum(-1).clamp(min=1)                                # (B,)


def log1mexp(s):
    """log(1 - exp(s)) for s <= 0, stable at both ends (Maechler 2012).

    Near 0, exp(s) ~ 1 and 1 - exp(s) cancels: use log(-expm1(s)). Far below 0, exp(s) ~ 0 and
    log1p(-exp(s)) is exact. The switch point is s = -log 2.
    NOTE (reconstructs paper): s is clamped to <= -1e-6 (log1mexp(0) = -inf); see deviation 6 above.
    """
    s = s.clamp(max=-1e-6)
    return torch.where(s > -0.6931471805599453,
                       torch.log(-torch.expm1(s)),
                       torch.log1p(-torch.exp(s)))


def _pair_shapes(*tensors):
    shape = tensors[0].shape
    for t in tensors:
        if t.shape != shape or t.dim() != 1:
            raise ValueError("losses: every per-sequence input must have the same shape (B,); got "
                             + ", ".join(str(tuple(u.shape)) for u in tensors))


def _reward_metrics(chosen_rewards, rejected_rewards, **extra):
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {"chosen_rewards": chosen_rewards,                                # (B,)
               "rejected_rewards": rejected_rewards,                            # (B,)
               "margins": chosen_rewards - rejected_rewards,                    # (B,)
               "accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype)}  # (B,)
    metrics.update({k: v.detach() for k, v in extra.items()})
    return metrics


def _logratios(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    """rho(y_w), rho(y_l) and h; the reference enters as a constant."""
    _pair_shapes(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps.detach()        # (B,) rho(y_w)
    rejected_logratios = policy_rejected_logps - reference_rejected_logps.detach()  # (B,) rho(y_l)
    h = chosen_logratios - rejected_logratios                                       # (B,) margin h
    return chosen_logratios, rejected_logratios, h


# ============================================================================================================
# DPO  (Rafailov et al., arXiv 2305.18290; final loss = Eq. 7; derivation in Sec. 4 and App. A.1)
#
# 1) RLHF objective, per prompt x:  max_pi  E_{y ~ pi}[ r(x, y) ]  -  beta * KL( pi(.|x) || pi_ref(.|x) )
# 2) Its maximiser is  pi*(y|x) = pi_ref(y|x) * exp( r(x, y) / beta ) / Z(x).
# 3) Solved for the reward:  r(x, y) = beta * log( pi*(y|x) / pi_ref(y|x) ) + beta * log Z(x).
# 4) Bradley-Terry:  P(y_w > y_l | x) = sigmoid( r(x, y_w) - r(x, y_l) ); beta * log Z(x) cancels.
# 5) Put pi_theta in place of pi* and minimise the NLL of the observed preference:
#        h    = rho(y_w) - rho(y_l)
#        loss = -log sigmoid( beta * h )  =  softplus( -beta * h )
# Gradient (checked):  d loss / d h = -beta * sigmoid( -beta * h )
# Swap symmetry (checked):  loss(h) - loss(-h) = -beta * h      [softplus(-u) - softplus(u) = -u]
# Sanity values (checked):  h = 0 -> log 2 = 0.693147 for any beta;  beta = 0.1, h = 10 -> 0.313262
# Rewards (TRL's names): chosen_rewards = beta * rho(y_w), rejected_rewards = beta * rho(y_l).
# NOTE (deviates from paper): none. Log-probs are SUMS over completion tokens.
# ============================================================================================================
def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             *, beta=0.1):
    """Shapes: all inputs (B,) summed log-probs. Returns losses (B,), metrics."""
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = F.softplus(-beta * h)                                              # (B,) step 5
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios)


# ============================================================================================================
# cDPO, conservative / label-smoothed DPO (Mitchell 2023, "A note on DPO with noisy preferences")
#
# 1) Assume each label was flipped with probability eps. The probability of the OBSERVED label is then
#        (1 - eps) * sigmoid(beta * h) + eps * sigmoid(-beta * h).
# 2) cDPO uses the label-smoothed cross-entropy instead (an upper bound of the NLL of 1), i.e. the
#    cross-entropy against the soft target (1 - eps, eps):
#        loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
#             = (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h)
# 3) Its minimiser over h is finite: sigmoid(beta * h*) = 1 - eps, i.e. beta * h* = log((1 - eps) / eps).
# Gradient (checked):  d loss / d h = -beta * [ (1 - eps) * sigmoid(-beta*h) - eps * sigmoid(beta*h) ]
# Reduction (checked): eps = 0 gives DPO.
# Sanity value (checked): beta = 0.1, h = 10, eps = 0.1 -> 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262
# NOTE (deviates from paper): none (TRL calls this DPO with label_smoothing).
# ============================================================================================================
def cdpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
              *, beta=0.1, label_smoothing=0.1):
    """Shapes: all inputs (B,) summed log-probs. Returns losses (B,), metrics."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"cdpo_loss: label_smoothing (eps) must be in [0, 0.5), got {label_smoothing}")
    eps = label_smoothing
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = (1 - eps) * F.softplus(-beta * h) + eps * F.softplus(beta * h)     # (B,) step 2
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios)


# ============================================================================================================
# rDPO, robust DPO (Chowdhury et al., arXiv 2403.00409; Eq. 8 there)
#
# 1) Same noise model as cDPO: each label flipped with known probability eps < 1/2.
# 2) Let l(+) = -log sigmoid(beta * h) (loss if the label is right) and l(-) = -log sigmoid(-beta * h)
#    (loss if it is flipped). rDPO builds an UNBIASED estimate of the clean loss from the noisy label:
#        loss = [ (1 - eps) * l(+)  -  eps * l(-) ] / (1 - 2 eps)
#    Check: E_noise[loss] = (1-eps) * loss(observed) + eps * loss(flipped)
#           = [ (1-eps)^2 l(+) - (1-eps) eps l(-) + eps (1-eps) l(-) - eps^2 l(+) ] / (1-2eps) = l(+).
# 3) Unlike cDPO the per-pair loss is not bounded below (the -eps * l(-) term), which is the price of
#    unbiasedness; in expectation over the noise it is the clean DPO loss.
# Gradient (checked):  d loss / d h = -beta * [ (1-eps) sigmoid(-beta h) + eps sigmoid(beta h) ] / (1 - 2 eps)
# Reduction (checked): eps = 0 gives DPO.
# Sanity value (checked): beta = 0.1, h = 10, eps = 0.1 -> (0.9*0.313262 - 0.1*1.313262)/0.8 = 0.188262
# NOTE (deviates from paper): none.
# ============================================================================================================
def rdpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
              *, beta=0.1, label_smoothing=0.1):
    """Shapes: all inputs (B,) summed log-probs. Returns losses (B,), metrics."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"rdpo_loss: label_smoothing (eps) must be in [0, 0.5), got {label_smoothing}")
    eps = label_smoothing
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = ((1 - eps) * F.softplus(-beta * h) - eps * F.softplus(beta * h)) / (1 - 2 * eps)  # (B,) step 2
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios)


# ============================================================================================================
# IPO (Azar et al., arXiv 2310.12036; empirical loss = Eq. 17 there, with tau written as beta here)
#
# 1) PsiPO with Psi = identity: maximise the expected preference probability  minus  tau * KL to pi_ref.
# 2) For one labelled pair the population objective becomes a regression of the margin onto a constant:
#        loss = ( h - 1 / (2 * tau) )^2          (tau = TRL's `beta`)
# 3) Minimiser: h* = 1/(2 tau), FINITE for every pair, so IPO never pushes margins to infinity; but every
#    labelled pair gets the same target gap, whatever its true preference strength (Fisch et al. C.2).
# Gradient (checked):  d loss / d h = 2 * ( h - 1/(2 beta) )
# Sanity values (checked):  beta = 0.1 -> loss 0 at h = 5 and 25 at h = 0.
# NOTE (deviates from paper): the LOSSES registry feeds IPO token-AVERAGED log-probs, as TRL does. The IPO
#   paper writes h with sequence log-likelihoods and does not discuss length. With summed log-probs the
#   fixed target 1/(2 tau) is reached by shifting a few tokens of a long answer; averaging makes the target
#   a per-token margin, independent of length. Pass summed log-probs yourself to get the literal form.
# ============================================================================================================
def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             *, beta=0.1):
    """Shapes: all inputs (B,) log-probs (averaged when called through LOSSES). Returns losses (B,), metrics."""
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = (h - 1.0 / (2.0 * beta)) ** 2                                      # (B,) step 2
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios)


# ============================================================================================================
# Hinge (SLiC-HF, Zhao et al., arXiv 2305.10425; RSO, Liu et al., arXiv 2309.06657, Eq. 6)
#
# 1) SLiC calibrates with a margin hinge on sequence log-likelihoods: max(0, delta - S(y_w) + S(y_l)).
# 2) RSO's "hinge" variant replaces raw likelihoods by the DPO log-ratio, scaled by beta, with delta = 1:
#        loss = max(0, 1 - beta * h) = relu(1 - beta * h)
#    Pairs whose margin already exceeds 1/beta get no gradient at all (unlike DPO's ever-shrinking push).
# Gradient (checked):  d loss / d h = -beta if beta * h < 1, else 0.
# Sanity values (checked): h = 0 -> 1;  beta = 0.1, h = 5 -> 0.5;  beta = 0.1, h = 20 -> 0.
# NOTE (deviates from paper): this is TRL's / RSO's form; SLiC's extra cross-entropy term on an SFT
#   target (lambda * -S(y_ref)) is not included.
# ============================================================================================================
def hinge_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
               *, beta=0.1):
    """Shapes: all inputs (B,) summed log-probs. Returns losses (B,), metrics."""
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    losses = torch.relu(1.0 - beta * h)                                         # (B,) step 2
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios)


# ============================================================================================================
# SimPO (Meng et al., arXiv 2405.14734; Eq. 6 there)
#
# 1) Replace DPO's implicit reward beta * rho(y) by a reference-free, length-normalised one:
#        r_SimPO(x, y) = beta * Sbar(y)
# 2) Ask the winner to beat the loser by a target margin gamma inside Bradley-Terry:
#        u    = beta * Sbar(y_w) - beta * Sbar(y_l) - gamma
#        loss = -log sigmoid(u) = softplus(-u)
# Gradient (checked):  d loss / d Sbar(y_w) = -beta * sigmoid(-u);  d loss / d Sbar(y_l) = +beta * sigmoid(-u)
# Sanity values (checked): Sbar(y_w) = Sbar(y_l) -> softplus(gamma) (gamma = 1: 1.313262);
#                          beta = 2, gamma = 1, Sbar gap 0.5 -> u = 0 -> log 2.
# NOTE (deviates from paper): none. gamma is the absolute margin (not gamma/beta as in some code bases).
# ============================================================================================================
def simpo_loss(policy_chosen_logps, policy_rejected_logps, *, beta=2.0, gamma=1.0):
    """Shapes: (B,) token-AVERAGED log-probs Sbar. Returns losses (B,), metrics."""
    _pair_shapes(policy_chosen_logps, policy_rejected_logps)
    chosen_rewards = beta * policy_chosen_logps                                 # (B,) step 1
    rejected_rewards = beta * policy_rejected_logps                             # (B,)
    u = chosen_rewards - rejected_rewards - gamma                               # (B,) step 2
    losses = F.softplus(-u)                                                     # (B,)
    return losses, _reward_metrics(chosen_rewards, rejected_rewards)


# ============================================================================================================
# ORPO (Hong et al., arXiv 2403.07691; Eqs. 6-7 there)
#
# 1) Length-normalised likelihood p(y) = exp(Sbar(y)); its odds: odds(y) = p(y) / (1 - p(y)).
# 2) Log-odds, stably:  logodds(y) = Sbar(y) - log(1 - exp(Sbar(y))) = Sbar(y) - log1mexp(Sbar(y))
# 3) Odds-ratio term:   L_OR = -log sigmoid( logodds(y_w) - logodds(y_l) )
# 4) Plus SFT on the winner (token-averaged NLL):  loss = -Sbar(y_w) + beta * L_OR   (beta = ORPO's lambda)
# Gradient (checked), with v = logodds(y_w) - logodds(y_l) and d logodds / d s = 1 / (1 - exp(s)):
#        d loss / d Sbar(y_w) = -1 - beta * sigmoid(-v) / (1 - exp(Sbar(y_w)))
# Sanity value (checked): Sbar(y_w) = Sbar(y_l) = log 0.5 -> v = 0 -> loss = log 2 + beta * log 2.
# Rewards (TRL's convention): chosen_rewards = beta * Sbar(y_w), rejected_rewards = beta * Sbar(y_l).
# NOTE (deviates from paper): none; TRL's ORPO matches this form.
# ============================================================================================================
def orpo_loss(policy_chosen_logps, policy_rejected_logps, *, beta=0.1):
    """Shapes: (B,) token-AVERAGED log-probs Sbar (<= 0). Returns losses (B,), metrics."""
    _pair_shapes(policy_chosen_logps, policy_rejected_logps)
    chosen_logodds = policy_chosen_logps - log1mexp(policy_chosen_logps)        # (B,) step 2
    rejected_logodds = policy_rejected_logps - log1mexp(policy_rejected_logps)  # (B,)
    log_odds_ratio = chosen_logodds - rejected_logodds                          # (B,) v
    odds_ratio_loss = F.softplus(-log_odds_ratio)                               # (B,) step 3
    nll = -policy_chosen_logps                                                  # (B,) step 4
    losses = nll + beta * odds_ratio_loss                                       # (B,)
    return losses, _reward_metrics(beta * policy_chosen_logps, beta * policy_rejected_logps,
                                   log_odds_ratio=log_odds_ratio, nll_loss=nll)


# ============================================================================================================
# Reward-model distillation, "distilled DPO" (Fisch et al., arXiv 2405.19316 v2, Sec. 3, Eq. 7 there)
#
# 1) From DPO step 3, a policy pi corresponds to the implicit reward beta * rho(y) (up to a per-prompt
#    constant). Instead of fitting BT to labels, match an explicit reward model R directly:
#        loss = ( dR - beta * h )^2,   dR = R(x, y_w) - R(x, y_l),  h = rho(y_w) - rho(y_l)
# 2) The per-prompt constants beta * log Z(x) and any per-prompt reward offset cancel in the differences.
# 3) If the pairs cover all responses, the unique minimiser is pi*_R = pi_ref * exp(R / beta) / Z, the
#    optimum of the KL-regularised RL problem, WHATEVER distribution the pairs were sampled from, and
#    the target gap is finite: no drift to infinity. Labels are not even needed (either order works).
# Gradient (checked):  d loss / d h = -2 * beta * ( dR - beta * h )
# Sanity values (checked): beta * h = dR -> 0;  dR = 1, h = 0 -> 1.
# NOTE (deviates from paper): Oracle rewards are used raw (no standardisation here; a caller may standardise
#   them over the training set; train.py does not, README deviation 10).
# ============================================================================================================
def distill_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 oracle_chosen_rewards, oracle_rejected_rewards, *, beta=0.1):
    """Shapes: all inputs (B,); log-probs summed. Returns losses (B,), metrics."""
    _pair_shapes(oracle_chosen_rewards, oracle_rejected_rewards, policy_chosen_logps)
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    oracle_margin = (oracle_chosen_rewards - oracle_rejected_rewards).detach()  # (B,) dR
    losses = (oracle_margin - beta * h) ** 2                                    # (B,) step 1
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios,
                                   oracle_margin=oracle_margin)


def _forward_kl_estimate(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps):
    """Per-pair estimate of KL(pi_ref || pi) = E_{y ~ pi_ref}[ S_ref(y) - S(y) ] from the pair's 2 responses.

    NOTE (deviates from paper): y should be sampled from pi_ref; we use the dataset's two responses
    (deviation 2). The gradient is what matters: -(grad S(y_w) + grad S(y_l)) / 2, an SFT pull on both.
    """
    return 0.5 * ((reference_chosen_logps.detach() - policy_chosen_logps)
                  + (reference_rejected_logps.detach() - policy_rejected_logps))  # (B,)


# ============================================================================================================
# e-DPO, pessimistic ensemble distillation (Fisch et al., arXiv 2405.19316 v2, Sec. 4, Eq. 11-12 there)
#
# 1) Uncertainty set S of reward models; pessimistic objective:
#        max_pi min_{R in S}  E_pi[R] - E_pi_ref[R] - beta * KL(pi || pi_ref)
# 2) For fixed R the inner max over pi is beta * KL(pi_ref || pi*_R): pessimism picks the member whose
#    optimal policy is closest to pi_ref in FORWARD KL.
# 3) Relaxed into a loss over an ensemble R_1..R_K:
#        loss = min_k  L_distill(R_k)  +  kl_coef * KL(pi_ref || pi)
#    with L_distill(R_k) = (dR_k - beta * h)^2 per pair, and KL estimated per pair (see above).
# 4) Where the min is taken (the `aggregate` switch):
#        "batch_min"   k* = argmin_k mean_batch L_distill(R_k); every pair uses member k*  (dataset-level min)
#        "example_min" per pair, min_k L_distill(R_k)
#        "mean"        per pair, mean_k L_distill(R_k)  (not pessimistic; an ablation)
# Gradient (checked), "example_min", member k* of the pair:
#        d loss / d S(y_w) = -2 * beta * ( dR_k* - beta * h ) - kl_coef / 2
# Reductions (checked): K = 1 and kl_coef = 0 gives distill_loss.
# NOTE (deviates from paper): default aggregate "batch_min" is our reading (deviation 3); the min is over
#   the MICRO-batch the caller passes, so it is an estimate of the dataset-level min. Forward KL on dataset
#   responses (deviation 2). Log-probs are summed.
# ============================================================================================================
def edpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
              oracle_chosen_rewards, oracle_rejected_rewards, *, beta=0.1, kl_coef=0.1, aggregate="batch_min"):
    """Shapes: log-probs (B,) summed; oracle rewards (K, B) for K ensemble members ((B,) means K = 1)."""
    if oracle_chosen_rewards.dim() == 1:
        oracle_chosen_rewards, oracle_rejected_rewards = oracle_chosen_rewards[None], oracle_rejected_rewards[None]
    B = policy_chosen_logps.shape[0]
    if oracle_chosen_rewards.dim() != 2 or oracle_chosen_rewards.shape != oracle_rejected_rewards.shape \
            or oracle_chosen_rewards.shape[1] != B:
        raise ValueError(f"edpo_loss: oracle rewards must have shape (K, B) = (K, {B}); got "
                         f"{tuple(oracle_chosen_rewards.shape)} and {tuple(oracle_rejected_rewards.shape)}")
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    oracle_margins = (oracle_chosen_rewards - oracle_rejected_rewards).detach()  # (K, B) dR_k
    member_losses = (oracle_margins - beta * h[None, :]) ** 2                   # (K, B) step 3
    if aggregate == "batch_min":
        k = member_losses.detach().mean(dim=1).argmin()                         # ()   step 4
        distill, member = member_losses[k], k.expand(B)                         # (B,), (B,)
        oracle_margin = oracle_margins[k]                                       # (B,) target used
    elif aggregate == "example_min":
        distill, member = member_losses.min(dim=0)                              # (B,), (B,)
        oracle_margin = oracle_margins.gather(0, member[None])[0]               # (B,) target used
    elif aggregate == "mean":
        distill, member = member_losses.mean(dim=0), torch.full((B,), -1, device=h.device)
        oracle_margin = oracle_margins.mean(dim=0)                              # (B,)
    else:
        raise ValueError(f"edpo_loss: aggregate must be 'batch_min', 'example_min' or 'mean'; got {aggregate!r}")
    forward_kl = _forward_kl_estimate(policy_chosen_logps, policy_rejected_logps,
                                      reference_chosen_logps, reference_rejected_logps)  # (B,)
    losses = distill + kl_coef * forward_kl                                     # (B,) step 3
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios,
                                   distill_loss=distill, forward_kl=forward_kl,
                                   oracle_margin=oracle_margin, member=member.to(h.dtype))


# ============================================================================================================
# p-DPO, pessimistic DPO (Fisch et al., arXiv 2405.19316 v2, Sec. 4)
#
# 1) Uncertainty set = reward functions whose BT likelihood on the data is near-optimal; the same
#    relaxation as e-DPO turns the pessimism into a forward-KL penalty on top of DPO:
#        loss = softplus(-beta * h)  +  kl_coef * KL(pi_ref || pi)
# Gradient (checked):  d loss / d S(y_w) = -beta * sigmoid(-beta * h) - kl_coef / 2
# Reduction (checked): kl_coef = 0 gives DPO.
# NOTE (deviates from paper): forward KL on dataset responses (deviation 2).
# ============================================================================================================
def pdpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
              *, beta=0.1, kl_coef=0.1):
    """Shapes: all inputs (B,) summed log-probs. Returns losses (B,), metrics."""
    chosen_logratios, rejected_logratios, h = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    forward_kl = _forward_kl_estimate(policy_chosen_logps, policy_rejected_logps,
                                      reference_chosen_logps, reference_rejected_logps)  # (B,)
    losses = F.softplus(-beta * h) + kl_coef * forward_kl                       # (B,) step 1
    return losses, _reward_metrics(beta * chosen_logratios, beta * rejected_logratios, forward_kl=forward_kl)


# ============================================================================================================
# DRDO phase 1: the Oracle (Nath et al., arXiv 2410.08458 v2, Sec. 3, Eq. 6; RECONSTRUCTED, README dev. 4)
#
# 1) A reward model R_phi(x, y) (scalar head on the last token) fitted by Bradley-Terry:
#        L_BT = -log sigmoid( R_phi(x, y_w) - R_phi(x, y_l) ) = softplus( -(R_w - R_l) )
# 2) Plus a language-modelling regulariser on the WINNER only, token-averaged NLL from the same backbone's
#    LM head (the Oracle "can do both"):  L_NLL = -Sbar_phi(y_w)
# 3)     loss = L_BT + alpha * L_NLL
# Gradient (checked):  d loss / d R_w = -sigmoid( -(R_w - R_l) );  d loss / d NLL = alpha
# Sanity value (checked): R_w = R_l, NLL = 2, alpha = 0.1 -> log 2 + 0.2 = 0.893147
# NOTE (reconstructs paper): the form of Eq. 6 is confirmed (BT + alpha-weighted likelihood of y_w); the
#   last-token head, the token averaging and alpha's value are our choices (deviation 4).
# ============================================================================================================
def oracle_loss(chosen_rewards, rejected_rewards, chosen_nll, *, alpha=0.1):
    """Shapes: chosen_rewards, rejected_rewards (B,) Oracle rewards; chosen_nll (B,) token-averaged NLL of y_w."""
    _pair_shapes(chosen_rewards, rejected_rewards, chosen_nll)
    bt = F.softplus(-(chosen_rewards - rejected_rewards))                       # (B,) step 1
    losses = bt + alpha * chosen_nll                                            # (B,) step 3
    return losses, _reward_metrics(chosen_rewards, rejected_rewards, bt_loss=bt, nll_loss=chosen_nll)


# ============================================================================================================
# DRDO's focal preference term (Nath et al., arXiv 2410.08458 v2, Eq. 7 and Fig. 4)
#
# 1) p = sigmoid(z) is the student's probability that y_w wins.
# 2) Focal loss (Lin et al. 2017) on that probability:  F_gamma(z) = -(1 - p)^gamma * log p
# 3) Stable form: 1 - p = sigmoid(-z), so (1 - p)^gamma = exp( gamma * logsigmoid(-z) ) and
#        F_gamma(z) = -exp( gamma * logsigmoid(-z) ) * logsigmoid(z)
#    Both logsigmoid calls are finite for |z| up to 1000 and beyond (no sigmoid(z) -> 0 -> log 0).
# Gradient (checked, also against a table of 5 gammas x 7 z values in test_losses.py):
#        d F / d z = (1 - p)^gamma * [ gamma * p * log p - (1 - p) ]
#    For z >> 0 this is ~ -(1 + gamma) e^{-(1+gamma) z}: gradient descent still grows z, but like
#    log(t) / (1 + gamma) instead of log(t). Focal modulation slows divergence; it does not stop it.
# Reduction (checked): gamma = 0 gives softplus(-z), the logistic (DPO-style) loss.
# NOTE (reconstructs paper): the factor (1 - p)^gamma is NOT detached (standard focal loss).
# Returns a single tensor, like z (a building block, not a full pair loss).
# ============================================================================================================
def focal_preference_loss(z, *, gamma=2.0):
    """Shape: z (any shape) -> F_gamma(z), same shape."""
    return -torch.exp(gamma * F.logsigmoid(-z)) * F.logsigmoid(z)               # step 3


# ============================================================================================================
# DRDO phase 2: the student (Nath et al., arXiv 2410.08458 v2, Sec. 3, Eq. 7; RECONSTRUCTED, README dev. 5)
#
# 1) Reward distillation, no reference model: regress the student's reward gap on the Oracle's:
#        L_KD = ( dR - dr )^2,   dR = R(x, y_w) - R(x, y_l) (frozen),  dr = r(x, y_w) - r(x, y_l)
#    r comes from the caller. The paper calls it the policy's IMPLICIT reward; without a reference model
#    that is the policy's own scaled log-likelihood (the same authors' DPL paper defines reference-free
#    implicit rewards this way):
#        implicit-sum   r(x, y) = beta_r * S(y)      implicit-mean  r(x, y) = beta_r * Sbar(y)
#    or, as an ablation, a scalar reward head on the policy (train.py --student_reward head).
# 2) A preference score z from the policy's token-averaged log-probs (the `score` switch):
#        "unlikelihood" (default)  z = log(1 - exp(Sbar(y_l))) - log(1 - exp(Sbar(y_w)))
#                                  contrastive log-unlikelihood: grows when y_w gets likelier, y_l unlikelier
#        "likelihood"              z = Sbar(y_w) - Sbar(y_l)
#        "odds"                    z = [Sbar(y_w) - log(1 - exp(Sbar(y_w)))] - [Sbar(y_l) - log(1 - exp(Sbar(y_l)))]
#                                  = likelihood + unlikelihood (ORPO's log-odds ratio)
# 3) Focal preference term on p = sigmoid(z):  L_pref = F_gamma(z) = -(1 - p)^gamma * log p
# 4)     loss = lambda_KD * L_KD + alpha * L_pref        (lambda_KD = distill_weight, 1 in the paper's form)
# Partial derivatives (checked):
#        d loss / d r(y_w)     = -2 * lambda_KD * ( dR - dr )          (and +2 * lambda_KD * (dR - dr) for y_l)
#        d loss / d Sbar(y_w)  = alpha * F'_gamma(z) * dz/dSbar(y_w), with dz/dSbar(y_w) =
#             unlikelihood: pbar_w / (1 - pbar_w), pbar = exp(Sbar);  likelihood: 1;  odds: 1 / (1 - pbar_w)
# Full gradient with respect to the policy's parameters theta, when r is the implicit reward (checked):
#    Write g(y) = grad_theta S(y) = sum_t grad_theta log pi(y_t | x, y_<t), and |y| the token count, so
#    grad_theta Sbar(y) = g(y) / |y|. Then, for implicit-sum (r = beta_r * S),
#        grad L = [ -2 lambda_KD beta_r (dR - dr) + alpha F'(z) dz/dSbar_w / |y_w| ] g(y_w)
#               + [ +2 lambda_KD beta_r (dR - dr) + alpha F'(z) dz/dSbar_l / |y_l| ] g(y_l)
#    and for implicit-mean (r = beta_r * Sbar) the distillation coefficients are divided by |y| too:
#        grad L = [ -2 lambda_KD beta_r (dR - dr) + alpha F'(z) dz/dSbar_w ] g(y_w) / |y_w|  + (same for y_l)
#    Both terms move the SAME direction g(y): distillation sets how far apart the two likelihoods go
#    (to dr = dR), the focal term which way a near-tie leans. With a reward HEAD, r has its own gradient
#    grad_theta r(y) through the head and the shared trunk, and the LM head is moved by the focal term alone.
# How much the unlikelihood score lets through: dz/dSbar_w = pbar / (1 - pbar) with pbar = exp(Sbar):
#        Sbar = -5   (a 1M-parameter model on tweets, the embedded task)  ->  0.0068
#        Sbar = -2                                                         ->  0.157
#        Sbar = -1                                                         ->  0.582
#        Sbar = -0.5 (a large SFT model on its own kind of text)          ->  1.54
#    so on small models the focal term barely reaches the LM and distillation does the work; at paper scale
#    the two are comparable. train.py logs each term's gradient norm (grad_norm/distill, grad_norm/pref).
# Reductions (checked): alpha = 0 is pure reward regression; lambda_KD = 0 is the focal term alone;
#    dR = dr and alpha = 0 gives 0.
# Metrics: chosen/rejected_rewards are the student rewards r; plus oracle_margin (dR), student_margin
#   (dr), distill_loss (regression error), focal_weight (1 - p)^gamma, pref_logit z, pref_loss.
# NOTE (reconstructs paper): alpha on the preference term, the lambda_KD switch, the z switch and its
#   default, the non-detached focal factor, and the student reward's form and scale are our reconstruction
#   (README deviation 5). The paper's alpha and gamma were not recovered.
# ============================================================================================================
def _drdo_score(chosen_avg_logps, rejected_avg_logps, score):
    if score == "unlikelihood":
        return log1mexp(rejected_avg_logps) - log1mexp(chosen_avg_logps)        # (B,)
    if score == "likelihood":
        return chosen_avg_logps - rejected_avg_logps                            # (B,)
    if score == "odds":
        return ((chosen_avg_logps - log1mexp(chosen_avg_logps))
                - (rejected_avg_logps - log1mexp(rejected_avg_logps)))          # (B,)
    raise ValueError(f"drdo_loss: score must be 'unlikelihood', 'likelihood' or 'odds'; got {score!r}")


def drdo_loss(student_chosen_rewards, student_rejected_rewards, oracle_chosen_rewards, oracle_rejected_rewards,
              policy_chosen_logps, policy_rejected_logps, *, alpha=1.0, gamma=2.0, score="unlikelihood",
              distill_weight=1.0):
    """Shapes: all inputs (B,); policy log-probs token-AVERAGED (Sbar <= 0). Returns losses (B,), metrics."""
    _pair_shapes(student_chosen_rewards, student_rejected_rewards, oracle_chosen_rewards,
                 oracle_rejected_rewards, policy_chosen_logps, policy_rejected_logps)
    oracle_margin = (oracle_chosen_rewards - oracle_rejected_rewards).detach()  # (B,) dR
    student_margin = student_chosen_rewards - student_rejected_rewards          # (B,) dr
    distill = (oracle_margin - student_margin) ** 2                             # (B,) step 1
    z = _drdo_score(policy_chosen_logps, policy_rejected_logps, score)          # (B,) step 2
    pref = focal_preference_loss(z, gamma=gamma)                                # (B,) step 3
    losses = distill_weight * distill + alpha * pref                            # (B,) step 4
    focal_weight = torch.exp(gamma * F.logsigmoid(-z))                          # (B,) (1 - p)^gamma
    return losses, _reward_metrics(student_chosen_rewards, student_rejected_rewards,
                                   oracle_margin=oracle_margin, student_margin=student_margin,
                                   distill_loss=distill, pref_loss=pref, pref_logit=z,
                                   focal_weight=focal_weight)


# ============================================================================================================
# SFT: the negative log-likelihood of the preferred response (the usual first stage, and a baseline)
#
#        loss = -Sbar(y_w)        token-averaged NLL of the chosen response; y_l is not used
# Gradient (checked):  d loss / d Sbar(y_w) = -1;  d loss / d Sbar(y_l) = 0
# Rewards: chosen_rewards = Sbar(y_w), rejected_rewards = Sbar(y_l) (the policy's own likelihoods, so
#   `accuracies` tells how often SFT on y_w alone already ranks y_w above y_l).
# NOTE (deviates from paper): none; the mean over each sequence's tokens, then over pairs (not over all
#   tokens of the batch at once, as the HF Trainer's causal-LM loss does).
# ============================================================================================================
def sft_loss(policy_chosen_logps, policy_rejected_logps):
    """Shapes: (B,) token-AVERAGED log-probs Sbar. Returns losses (B,), metrics."""
    _pair_shapes(policy_chosen_logps, policy_rejected_logps)
    losses = -policy_chosen_logps                                               # (B,)
    return losses, _reward_metrics(policy_chosen_logps, policy_rejected_logps)


# ============================================================================================================
# Registry: method name -> the function, what the trainer must feed it, and its hyper-parameters
#
# `inputs` lists, in call order, the pairs of (B,) tensors the function takes before its keywords:
#     "policy"          the policy's log-probs of y_w, y_l (summed, or token-averaged when average_logps)
#     "reference"       pi_ref's log-probs of y_w, y_l, with the same reduction (train.py caches them)
#     "oracle"          the Oracle's rewards R(x, y_w), R(x, y_l), averaged over ensemble members: (B,) each
#     "oracle_members"  every ensemble member's rewards: (K, B) each (e-DPO's pessimism needs them all)
#     "student"         DRDO's student rewards r(x, y_w), r(x, y_l); train.py's --student_reward says which
# `hparams` maps each keyword argument of the function to the train.py Config field that holds its value.
# Adding a loss = a function above + an entry here (+ a Config field for a new hyper-parameter).
# ============================================================================================================
@dataclass(frozen=True)
class LossInfo:
    fn: Callable
    inputs: tuple                  # names of the tensor pairs, in call order (see above)
    average_logps: bool            # True: token-averaged Sbar for "policy" and "reference"; False: summed S
    hparams: dict = field(default_factory=dict)   # keyword of fn -> train.Config field
    terms: dict = field(default_factory=dict)     # term name -> keyword overrides that leave only that term

    @property
    def needs_reference(self):
        return "reference" in self.inputs

    @property
    def needs_oracle(self):
        return "oracle" in self.inputs or "oracle_members" in self.inputs


_POL, _REF = ("policy",), ("policy", "reference")
LOSSES = {
    "dpo":     LossInfo(dpo_loss, _REF, False, {"beta": "beta"}),
    "cdpo":    LossInfo(cdpo_loss, _REF, False, {"beta": "beta", "label_smoothing": "label_smoothing"}),
    "rdpo":    LossInfo(rdpo_loss, _REF, False, {"beta": "beta", "label_smoothing": "label_smoothing"}),
    # NOTE (deviates from paper): averaged log-probs for IPO, as TRL; see ipo_loss.
    "ipo":     LossInfo(ipo_loss, _REF, True, {"beta": "beta"}),
    "hinge":   LossInfo(hinge_loss, _REF, False, {"beta": "beta"}),
    "simpo":   LossInfo(simpo_loss, _POL, True, {"beta": "simpo_beta", "gamma": "simpo_gamma"}),
    "orpo":    LossInfo(orpo_loss, _POL, True, {"beta": "orpo_beta"}),
    "distill": LossInfo(distill_loss, _REF + ("oracle",), False, {"beta": "beta"}),
    "edpo":    LossInfo(edpo_loss, _REF + ("oracle_members",), False,
                        {"beta": "beta", "kl_coef": "kl_coef", "aggregate": "aggregate"}),
    "pdpo":    LossInfo(pdpo_loss, _REF, False, {"beta": "beta", "kl_coef": "kl_coef"}),
    "drdo":    LossInfo(drdo_loss, ("student", "oracle", "policy"), True,
                        {"alpha": "alpha", "gamma": "gamma", "score": "score", "distill_weight": "distill_weight"},
                        terms={"distill": {"alpha": 0.0}, "pref": {"distill_weight": 0.0}}),
    "sft":     LossInfo(sft_loss, _POL, True),
}
