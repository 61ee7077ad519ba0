"""Gold-judged evaluation of trained policies against pi_ref (and each other).

On the embedded task the judge is the gold reward r*(y) = VADER sentiment of the completion: nothing trained
ever sees it, so unlike the DRDO paper's UltraFeedback win rates (judged by its own Oracle) the comparison is
not circular. Every policy is sampled on the SAME prompts with the SAME decoding settings and seeds, and sample
j of one policy is compared with sample j of the other.

Statistics (P prompts, n samples per prompt; all standard errors are over prompts, the unit that was drawn):
    gold mean        mean over prompts of the mean gold of the n samples
    gain             mean over prompts of (policy mean gold - reference mean gold); SE of that paired difference
    win / tie / loss share of the P * n sample pairs (j-th vs j-th) where the policy's gold is higher / equal /
                     lower; ties are reported separately (59% of pi_ref samples have no sentiment word: gold 0)
    win rate         win + tie / 2 (identical policies give exactly 0.5)
    KL(pi || pi_ref) Monte-Carlo: mean over samples y ~ pi of log pi(y|x) - log pi_ref(y|x) (summed over the
                     completion's tokens); 0 for identical policies; nats per sequence
"""
import math

import torch


def paired_comparison(policy_gold, reference_gold):
    """policy_gold, reference_gold: (P, n) nested lists or tensors of gold rewards on the same prompts and
    sample seeds -> dict of floats (see the module docstring)."""
    a = torch.as_tensor(policy_gold, dtype=torch.float64)                # (P, n)
    b = torch.as_tensor(reference_gold, dtype=torch.float64)             # (P, n)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"paired_comparison needs two (prompts, samples) arrays of one shape; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    P = a.shape[0]
    diff = a.mean(1) - b.mean(1)                                          # (P,) per-prompt gain
    win, tie = (a > b).double(), (a == b).double()                       # (P, n)
    per_prompt_wr = (win + 0.5 * tie).mean(1)                            # (P,)
    se = (lambda x: (x.std() / math.sqrt(P)).item() if P > 1 else float("nan"))
    return {"prompts": P, "samples_per_prompt": a.shape[1],
            "policy_gold": a.mean().item(), "policy_gold_se": se(a.mean(1)),
            "reference_gold": b.mean().item(), "reference_gold_se": se(b.mean(1)),
            "gain": diff.mean().item(), "gain_se": se(diff),
            "win": win.mean().item(), "tie": tie.mean().item(), "loss": (a < b).double().mean().item(),
            "win_rate": per_prompt_wr.mean().item(), "win_rate_se": se(per_prompt_wr)}


def monte_carlo_kl(policy_logps, reference_logps):
    """KL(pi || pi_ref) ~ mean of log pi(y) - log pi_ref(y) over y ~ pi. Inputs: (N,) summed log-probs of
    the SAME policy samples under both models -> (estimate, standard error)."""
    d = torch.as_tensor(policy_logps, dtype=torch.float64) - torch.as_tensor(reference_logps, dtype=torch.float64)
    return d.mean().item(), (d.std() / math.sqrt(len(d))).item() if len(d) > 1 else float("nan")
