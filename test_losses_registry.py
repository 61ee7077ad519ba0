"""Every registered loss at once: a fresh re-derivation of each on random inputs, detached metrics and no
gradient into frozen inputs, finiteness at the extremes, shape errors; and the LOSSES registry itself (what each
entry consumes, its keywords, and the fields of Config that fill them).
"""
import pytest
import torch

from losses import (LOSSES, accelerated_dpo_loss, ofs_dpo_loss, adpo_loss, dno_loss, inpo_loss, mnpo_loss, online_ipo_loss, sppo_loss, brain_loss, aot_loss, aot_unpaired_loss, apo_down_loss, apo_zero_loss, asft_loss,
                    bco_pair_loss, cdpo_loss, cpo_loss, discopop_loss, distill_loss, dpo_loss, drdo_loss, edpo_loss,
                    exo_loss, fdpo_loss, hinge_loss, ipo_loss, kto_loss, ld_dpo_loss, madpo_loss, modpo_loss,
                    nca_loss, orpo_loss, pdpo_loss, rdpo_loss, sft_loss, simpo_loss, sppo_hard_loss, tpo_l_loss,
                    tgdpo_loss, tpo_loss)


# ------------------------------------------------------------------------------------------------------------
# Every loss: independent re-derivation, stability, no leaks, shapes
# ------------------------------------------------------------------------------------------------------------
def _random_case(B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    summed = lambda: -torch.rand(B, generator=g, dtype=torch.float64) * 60 - 1      # S in [-61, -1]
    avg = lambda: -torch.rand(B, generator=g, dtype=torch.float64) * 4 - 0.05       # Sbar in [-4.05, -0.05]
    return dict(pc=summed(), pr=summed(), rc=summed(), rr=summed(), ac=avg(), ar=avg(),
                tc=summed() / 3, tr=summed() / 3, uc=summed() / 3, ur=summed() / 3,   # tails (policy, reference)
                nc=torch.randint(1, 40, (B,), generator=g).double(), nr=torch.randint(1, 40, (B,), generator=g).double(),
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
    # the related-work list's offline losses (issue 24), each from its formula
    al, dR, w0 = 0.3, c["Rw"] - c["Rl"], 0.7
    h_ld = (c["pc"] - (1 - al) * c["tc"] - c["rc"] + (1 - al) * c["uc"]) - (c["pr"] - (1 - al) * c["tr"]
                                                                          - c["rr"] + (1 - al) * c["ur"])
    kk, tau = 2.0, torch.log(torch.tensor(999.0, dtype=torch.float64))
    coef = 0.5 + 1.5 / (1 + kk * torch.exp(dR.abs() - tau))
    w_madpo = torch.where(dR > -tau, sig(coef * dR) / sig(dR), torch.ones_like(dR))
    q = sig(dR / 0.7)
    lsort = lambda x: torch.sort(x).values                                                        # noqa: E731
    d_aot = lsort(c["pc"] - c["pr"]) - lsort(c["rc"] - c["rr"])
    d_un = lsort(c["pc"] - c["rc"]) - lsort(c["pr"] - c["rr"])
    smooth = lambda d: -(1 - 0.1) * torch.log(sig(b * d)) - 0.1 * torch.log(sig(-b * d))          # noqa: E731
    cases.update({
        "ld_dpo": (ld_dpo_loss(*four, c["tc"], c["tr"], c["uc"], c["ur"], beta=b, alpha=al)[0],
                   -torch.log(sig(b * h_ld))),
        "sigmoid_norm": (dpo_loss(c["ac"], c["ar"], c["rc"] / 30, c["rr"] / 30, beta=b)[0], -torch.log(sig(b * ha))),
        "aot": (aot_loss(*four, beta=b, label_smoothing=0.1)[0], smooth(d_aot)),
        "aot_unpaired": (aot_unpaired_loss(*four, beta=b, label_smoothing=0.1)[0], smooth(d_un)),
        "madpo": (madpo_loss(*four, c["Rw"], c["Rl"], beta=b)[0], -w_madpo * torch.log(sig(b * h))),
        "adpo": (adpo_loss(*four, c["Rw"], c["Rl"], beta=b, temperature=0.7)[0],
                 -q * torch.log(sig(b * h)) - (1 - q) * torch.log(sig(-b * h))),
        "asft": (asft_loss(c["ac"], c["ar"], lam=0.4)[0],
                 -c["ac"] - 0.4 * (torch.log(sig(torch.log(odds(c["ac"])))) + torch.log(sig(-torch.log(odds(c["ar"])))))),
        "modpo": (modpo_loss(*four, -c["nc"], -c["nr"], beta=b, w0=w0)[0],
                  -torch.log(sig((b * h - (1 - w0) * (c["nr"] - c["nc"])) / w0))),
        # gold response: averaged log-prob tc / 30 (any negative number), summed tc
        "tpo": (tpo_loss(c["pc"], c["pr"], c["tc"] / 30, c["tc"], beta=0.01, alpha=0.6)[0],
                -torch.log(sig(0.01 * (c["pc"] - c["pr"]))) - 0.6 * c["tc"] / 30),
        "brain": (brain_loss(torch.stack([c["pc"], c["pr"]], -1), torch.stack([c["rc"], c["rr"]], -1),
                             torch.stack([c["Rw"], c["Rl"]], -1), beta=0.7)[0],
                  -(torch.softmax(torch.stack([c["Rw"], c["Rl"]], -1) / 0.7, -1)
                    * torch.log_softmax(torch.stack([rw, rl], -1), -1)).sum(-1)),
        "tgdpo": (tgdpo_loss(*four, c["tc"], c["tr"], c["uc"], c["ur"], beta=b, alpha=0.4)[0],
                  -torch.log(sig(b * ((rw + 0.4 * b * (c["tc"] - c["uc"])) - (rl - 0.4 * b * (c["tr"] - c["ur"])))))),
        "tpo_l": (tpo_l_loss(c["ac"], c["ar"], c["tc"] / 30, c["tc"], beta=2.0, gamma=0.4, alpha=0.6)[0],
                  -torch.log(sig(2.0 * (c["ac"] - c["ar"]) - 0.4)) - 0.6 * c["tc"] / 30),
    })
    # the online Nash family (online.py): anchors uc, ur (pi_t), win rates sigmoid(R), rewards R
    Pw, Pl, eta, ratio, al = sig(c["Rw"]), sig(c["Rl"]), 0.05, 0.25, 0.3
    rho_w, rho_l = c["pc"] - c["rc"], c["pr"] - c["rr"]
    mix = lambda a, r: ratio * r + (1 - ratio) * a                                               # noqa: E731
    h_mix = (c["pc"] - c["pr"]) - (mix(c["uc"], c["rc"]) - mix(c["ur"], c["rr"]))
    h_hist = (c["pc"] - c["pr"]) - ratio * (c["rc"] - c["rr"]) - (1 - ratio) * (
        0.5 * (c["uc"] + c["tc"]) - 0.5 * (c["ur"] + c["tr"]))
    hat_w, hat_l = (1 + al) * c["rc"] - al * c["uc"], (1 + al) * c["rr"] - al * c["ur"]
    zs = sig(Pw - Pl)
    cases.update({
        "sppo": (sppo_loss(*four, Pw, Pl, eta=10.0)[0], ((rho_w - 10 * (Pw - 0.5)) ** 2 + (rho_l - 10 * (Pl - 0.5)) ** 2) / 2),
        "dno": (dno_loss(*four, Pw, Pl, eta=b)[0], -zs * torch.log(sig(b * h)) - (1 - zs) * torch.log(sig(-b * h))),
        "inpo": (inpo_loss(*four, c["uc"], c["ur"], eta=eta, tau=ratio * eta)[0], (h_mix - 1 / (2 * eta)) ** 2),
        "mnpo": (mnpo_loss(*four, torch.stack([c["uc"], c["tc"]]), torch.stack([c["ur"], c["tr"]]), eta=eta,
                           ratio=ratio)[0], (h_hist - 1 / (2 * eta)) ** 2),
        "apo_accel": (accelerated_dpo_loss(*four, c["uc"], c["ur"], beta=b, alpha=al)[0],
                      -torch.log(sig(b * ((c["pc"] - hat_w) - (c["pr"] - hat_l))))),
        "online_ipo": (online_ipo_loss(*four, c["Rw"], c["Rl"], beta=b)[0], (h - (sig(c["Rw"] - c["Rl"]) - 0.5) / b) ** 2),
        "ofs_dpo": (ofs_dpo_loss(*four, c["tc"], c["tr"], beta=b, alpha=0.5)[0],
                    -torch.log(sig(b * h)) - torch.log(sig(b * ((c["tc"] - c["rc"]) - (c["tr"] - c["rr"]))))),
    })
    assert set(cases) == set(LOSSES), "a registered loss has no re-derivation here"
    for name, (ours, fresh) in cases.items():
        torch.testing.assert_close(ours, fresh, msg=lambda m, n=name: f"{n}: {m}")


def _call(name, pc, pr, rc, rr, ac, ar, Rw, Rl, rw, rl, tc, tr, uc, ur, nc, nr):
    """Call a registered loss the way train.py does: the tensor pairs its entry names, in order.
    Policy and reference log-probs come summed (pc, pr, rc, rr) or averaged (ac, ar; reference / 30)."""
    info = LOSSES[name]
    average = info.average_logps
    pairs = {"policy": (ac, ar) if average else (pc, pr),
             "reference": (rc / 30, rr / 30) if average else (rc, rr),
             "oracle": (Rw, Rl),
             "oracle_members": (Rw[None].expand(2, -1), Rl[None].expand(2, -1)),
             "student": (rw, rl),
             "policy_tail": (tc, tr), "reference_tail": (uc, ur), "brevity": (-nc, -nr), "gold": (tc / 30, tc),
             "policy_guided": (tc, tr), "reference_guided": (uc, ur),
             "group": (torch.stack([pc, pr, 0.5 * pc], -1), torch.stack([rc, rr, 0.5 * rc], -1)),   # (B, 3)
             "group_rewards": (torch.stack([Rw, Rl, 0.3 * Rw], -1), torch.stack([rc, rr, 0.5 * rc], -1)),
             "win_rates": (torch.sigmoid(Rw), torch.sigmoid(Rl)), "scores": (Rw, Rl),
             "anchor": (uc, ur), "anchors": (torch.stack([uc, 0.5 * uc]), torch.stack([ur, 0.5 * ur])),  # (2, B)
             "policy_slow": (tc, tr)}
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
    for frozen in ("rc", "rr", "Rw", "Rl", "uc", "ur", "nc", "nr"):   # reference, Oracle, lengths
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
        for k in ("pc", "pr", "rc", "rr", "ac", "ar", "tc", "tr", "uc", "ur"):
            base[k] = torch.tensor([-1e-7, -1e-4, 0.0])
    else:
        for k in ("pc", "pr", "rc", "rr", "ac", "ar", "tc", "tr", "uc", "ur"):
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
    # brain reads pi_ref too, but its own per-candidate cache (reference.group_reference_logps), not the pairs'
    assert reference_free == {"simpo", "orpo", "drdo", "sft", "cpo", "asft", "tpo", "tpo_l", "brain"}
    assert {n for n, i in LOSSES.items() if i.needs_oracle} == {"distill", "edpo", "drdo", "madpo", "adpo", "brain"}
    assert {n for n, i in LOSSES.items() if i.needs_group} == {"brain"}
    assert {n for n, i in LOSSES.items() if i.average_logps} == {"ipo", "simpo", "orpo", "drdo", "sft",
                                                                   "sigmoid_norm", "asft", "tpo_l"}
    assert {n for n, i in LOSSES.items() if i.needs_gold} == {"tpo", "tpo_l"}
    assert {n for n, i in LOSSES.items() if i.needs_guidance} == {"tgdpo"}
    assert {n: i.running for n, i in LOSSES.items() if i.running} == {
        "bco_pair": {"delta": "reward_mean"}, "ofs_dpo": {"fast_dpo_mean": "fast_dpo", "slow_dpo_mean": "slow_dpo"}}
    from losses import WindowArgmin
    assert {n: i.window for n, i in LOSSES.items() if i.window} == {
        "edpo": {"member": WindowArgmin("member_losses", ("aggregate", "batch_min"))}}
    # train.py --wpo: the pairwise preference losses, not those with an NLL, KL, Oracle or SFT term
    assert {n for n, i in LOSSES.items() if not i.wpo} == {"orpo", "cpo", "pdpo", "distill", "edpo", "drdo", "sft",
                                                            "aot", "aot_unpaired", "madpo", "adpo", "asft", "modpo",
                                                            "tpo", "tpo_l", "brain", "sppo", "dno", "inpo",
                                                            "mnpo", "apo_accel", "online_ipo", "ofs_dpo"}
    assert {n for n, i in LOSSES.items() if i.needs_anchors} == {"inpo", "mnpo", "apo_accel"}


def _metrics_for_a_keyword_train_fills(name, keyword):
    """Assert `keyword` is a keyword-only argument of the loss that no Config field fills (train.py fills it);
    return the loss's metrics on 5 random pairs."""
    import inspect
    info = LOSSES[name]
    assert inspect.signature(info.fn).parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY
    assert keyword not in info.hparams
    _, metrics = _call(name, **{k: v for k, v in _random_case(B=5).items() if k != "Rk"})
    return metrics


@pytest.mark.parametrize("name", sorted(n for n, i in LOSSES.items() if i.running))
def test_registry_running_keywords_are_keywords_fed_by_the_loss_own_metrics(name):
    # train.py fills each `running` keyword with the mean of the named metric over past pairs: the keyword must be
    # a keyword-only argument that no Config field fills, and the metric one the function returns, shape (B,)
    for keyword, metric in LOSSES[name].running.items():
        metrics = _metrics_for_a_keyword_train_fills(name, keyword)
        assert metrics[metric].shape == (5,)


@pytest.mark.parametrize("name", sorted(n for n, i in LOSSES.items() if i.window))
def test_registry_window_keywords_are_keywords_chosen_from_the_loss_own_candidate_metrics(name):
    # train.py fills each `window` keyword with argmin_k of the named (B, K) metric summed over the optimizer
    # batch: a keyword-only argument no Config field fills, a metric the function returns with one column per
    # candidate, and a `when` condition on a real Config field whose value is among its choices
    from dataclasses import fields

    from config import CHOICES, Config
    for keyword, rule in LOSSES[name].window.items():
        metrics = _metrics_for_a_keyword_train_fills(name, keyword)
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


# ------------------------------------------------------------------------------------------------------------
# Weighted combinations of entries (--method a+b --loss_weights ...)
# ------------------------------------------------------------------------------------------------------------
def test_a_combination_is_the_weighted_sum_of_its_members_on_their_own_inputs():
    from losses import combine
    c = _random_case(B=6)
    info = combine(["simpo", "dpo", "sft"])
    # simpo and sft read averaged log-probs, dpo summed ones and pi_ref (summed: the reference cache's reduction)
    assert info.inputs == ("policy_mean", "policy_sum", "reference") and info.average_logps is False
    assert info.hparams == {"0.beta": "simpo_beta", "0.gamma": "simpo_gamma", "1.beta": "beta",
                            "loss_weights": "loss_weights"}
    args = (c["ac"], c["ar"], c["pc"], c["pr"], c["rc"], c["rr"])
    losses, metrics = info.fn(*args, **{"0.beta": 1.7, "0.gamma": 0.3, "1.beta": 0.123}, loss_weights="0.5,1,0.2")
    simpo = simpo_loss(c["ac"], c["ar"], beta=1.7, gamma=0.3)[0]
    dpo = dpo_loss(c["pc"], c["pr"], c["rc"], c["rr"], beta=0.123)[0]
    sft = -c["ac"]
    torch.testing.assert_close(losses, 0.5 * simpo + dpo + 0.2 * sft)
    torch.testing.assert_close(metrics["loss/dpo"], dpo)
    torch.testing.assert_close(metrics["chosen_rewards"], 1.7 * c["ac"])            # the first member's rewards
    # a term alone keeps its weight (grad_norm/<member>); no weights = all 1
    only, _ = info.fn(*args, **{"0.beta": 1.7, "0.gamma": 0.3, "1.beta": 0.123}, loss_weights="0.5,1,0.2", only=2)
    torch.testing.assert_close(only, 0.2 * sft)
    ones, _ = info.fn(*args, **{"0.beta": 1.7, "0.gamma": 0.3, "1.beta": 0.123})
    torch.testing.assert_close(ones, simpo + dpo + sft)


@pytest.mark.parametrize("names,message", [
    (["ipo", "dpo"], "different reductions"),                 # one reference cache per run
    (["bco_pair", "sft"], "keeps state across steps"),
    (["edpo", "sft"], "keeps state across steps"),
    (["dpo", "nope"], "unknown --method 'nope'"),
])
def test_what_cannot_be_combined_is_a_clear_error(names, message):
    from losses import combine
    with pytest.raises(ValueError, match=message):
        combine(names)


@pytest.mark.parametrize("text,message", [("1", "1 weight"), ("1,x", "comma-separated numbers"),
                                          ("1,-1", ">= 0"), ("1,nan", ">= 0")])
def test_bad_loss_weights_are_a_clear_error(text, message):
    from losses import parse_loss_weights
    with pytest.raises(ValueError, match=message):
        parse_loss_weights(text, 2)
