"""The statistics of judged samples: pure functions on numbers, no models (evaluate.py and the study scripts use them).

A comparison of two policies on the same P prompts x n samples (sample j against sample j, same seeds):
    paired_comparison   gain (mean per-prompt reward difference) with its SE over prompts, win / tie / loss,
                        win rate, and optionally percentile-bootstrap intervals over prompts (bootstrap_ci)
    monte_carlo_kl      KL(pi || pi_ref) from the log-probs of pi's own samples under both models
    repetition_stats    distinct-2 and repeated-trigram share: the reward-hacking watch
Across several training seeds (tutorials/02_reproduction.py, 03_online.py):
    bootstrap_seeds_prompts   a two-way bootstrap: seeds and prompts drawn together (seed_prompt_draws)
    isotonic, frontier_at     a method's gain as a non-decreasing function of KL, read at given KLs
evaluate.py's docstring says what each statistic means in its output.
"""
import math

import torch


def paired_comparison(policy_reward, reference_reward, bootstrap=0, seed=0):
    """policy_reward, reference_reward: (P, n) nested lists or tensors of judge rewards on the same prompts and
    sample seeds -> dict of floats (see the module docstring); with `bootstrap` > 0, also 95% percentile-bootstrap
    intervals over prompts of the gain and of the win rate (bootstrap_ci)."""
    a = torch.as_tensor(policy_reward, dtype=torch.float64)              # (P, n)
    b = torch.as_tensor(reference_reward, dtype=torch.float64)           # (P, n)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"paired_comparison needs two (prompts, samples) arrays of one shape; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    P = a.shape[0]
    diff = a.mean(1) - b.mean(1)                                          # (P,) per-prompt gain
    win, tie = (a > b).double(), (a == b).double()                       # (P, n)
    per_prompt_wr = (win + 0.5 * tie).mean(1)                            # (P,)
    se = (lambda x: (x.std() / math.sqrt(P)).item() if P > 1 else float("nan"))
    out = {"prompts": P, "samples_per_prompt": a.shape[1],
           "policy_reward": a.mean().item(), "policy_reward_se": se(a.mean(1)),
           "reference_reward": b.mean().item(), "reference_reward_se": se(b.mean(1)),
           "gain": diff.mean().item(), "gain_se": se(diff),
           "win": win.mean().item(), "tie": tie.mean().item(), "loss": (a < b).double().mean().item(),
           "win_rate": per_prompt_wr.mean().item(), "win_rate_se": se(per_prompt_wr)}
    if bootstrap:
        out["gain_ci"] = bootstrap_ci(diff, bootstrap, seed)
        out["win_rate_ci"] = bootstrap_ci(per_prompt_wr, bootstrap, seed)
    return out


def bootstrap_ci(per_prompt, resamples, seed, level=0.95):
    """Percentile bootstrap over prompts: `resamples` draws of P prompts with replacement (seeded: the same
    draws for every statistic and policy), the mean of each draw -> [lower, upper] quantiles at (1 -+ level) / 2."""
    x = torch.as_tensor(per_prompt, dtype=torch.float64)                 # (P,)
    idx = torch.randint(len(x), (resamples, len(x)), generator=torch.Generator().manual_seed(seed))   # (R, P)
    means = x[idx].mean(1)                                               # (R,)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return torch.quantile(means, q).tolist()


# ------------------------------------------------------------------------------------------------------------
# Studies over several training seeds (tutorials/02_reproduction.py, 03_online.py). A run's result varies with
# its training seed AND with the prompts it is judged on; an interval over prompts alone (above) leaves out the
# first, a mean +- std over seeds the second. The two-way bootstrap draws both: S seeds and P prompts with
# replacement, independently, and the statistic is recomputed on the drawn (seed, prompt) table.
# ------------------------------------------------------------------------------------------------------------
def seed_prompt_draws(seeds, prompts, resamples=2000, seed=0):
    """The resamples' indices -> (R, S) seed draws and (R, P) prompt draws, with replacement. One set of draws is
    shared by every statistic of a study, so the differences between two methods are paired draw by draw."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(seeds, (resamples, seeds), generator=g), torch.randint(prompts, (resamples, prompts), generator=g)


def bootstrap_seeds_prompts(tables, resamples=2000, seed=0, level=0.95):
    """tables: (S, P) per-prompt values, one row per seed -> (mean, [lower, upper]): each resample averages the
    table at S drawn seeds x P drawn prompts; the interval is its (1 -+ level) / 2 quantiles."""
    x = torch.as_tensor(tables, dtype=torch.float64)                     # (S, P)
    s, p = seed_prompt_draws(*x.shape, resamples, seed)                  # (R, S), (R, P)
    drawn = torch.gather(x[s], 2, p[:, None, :].expand(-1, x.shape[0], -1))          # (R, S, P)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return x.mean().item(), torch.quantile(drawn.mean((1, 2)), q).tolist()


def isotonic(x, y, w=None):
    """Least-squares non-decreasing fit of y on x (pool adjacent violators) -> (xs, fitted) sorted by x.

    Minimises sum_i w_i (f(x_i) - y_i)^2 over non-decreasing f. PAV: walk the points in x order keeping blocks
    (weighted mean, weight); whenever a new block's mean is below the previous block's, merge the two (their
    weighted mean) and check again. Each block's points get the block's mean. Ties in x are ordered by y so that
    equal x never need to be split."""
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i]))
    w = [1.0] * len(x) if w is None else w
    blocks = []                                                          # [mean, weight, points]
    for i in order:
        blocks.append([float(y[i]), float(w[i]), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1, n1), (m2, w2, n2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    fitted = [m for m, _, n in blocks for _ in range(n)]
    return [float(x[i]) for i in order], fitted


def frontier_at(x, y, at):
    """The isotonic fit of y on x read at `at` (linear between fitted points; NaN outside [min x, max x]): a
    method's best gain within a KL budget, as a monotone curve through all its runs."""
    xs, fs = isotonic(x, y)
    out = []
    for k in at:
        if not xs or k < xs[0] or k > xs[-1]:
            out.append(float("nan"))
            continue
        j = next(j for j in range(len(xs)) if xs[j] >= k)
        if xs[j] == k or j == 0:
            out.append(max(f for xj, f in zip(xs, fs) if xj == xs[j]))
        else:
            out.append(fs[j - 1] + (fs[j] - fs[j - 1]) * (k - xs[j - 1]) / (xs[j] - xs[j - 1]))
    return out


def repetition_stats(texts):
    """Reward-hacking watch on a flat list of completions -> {"distinct2": mean distinct-bigram share,
    "repetition": share of completions with a word trigram that occurs at least twice}."""
    distinct, repeated = [], []
    for text in texts:
        words = text.split()
        bigrams = list(zip(words, words[1:]))
        trigrams = list(zip(words, words[1:], words[2:]))
        distinct.append(len(set(bigrams)) / len(bigrams) if bigrams else 1.0)
        repeated.append(float(len(set(trigrams)) < len(trigrams)))
    n = max(1, len(texts))
    return {"distinct2": sum(distinct) / n, "repetition": sum(repeated) / n}


def monte_carlo_kl(policy_logps, reference_logps):
    """KL(pi || pi_ref) ~ mean of log pi(y) - log pi_ref(y) over y ~ pi. Inputs: (N,) summed log-probs of
    the SAME policy samples under both models -> (estimate, standard error)."""
    d = torch.as_tensor(policy_logps, dtype=torch.float64) - torch.as_tensor(reference_logps, dtype=torch.float64)
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item() if len(d) > 1 else float("nan")
