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
                     completion's tokens); 0 for identical policies; nats per sequence. Only at temperature 1:
                     greedy or tempered samples are not draws from pi, and their mean log-ratio is not a KL
                     (it can be negative); other temperatures report NaN.
    distinct-2       mean over samples of (distinct word bigrams / word bigrams) of the completion: 1 = no
                     bigram repeats; low values are loops ("the best of the best of the best")
    repetition       share of samples in which some word trigram occurs twice or more
The last two watch for reward hacking: the gold reward is a lexicon, and a policy far from pi_ref can
raise it by repeating sentiment words; read them at temperature 1 and greedy (temperature 0).

    python evaluate.py --policies runs/dpo-...,runs/drdo-... --names dpo,drdo     # writes eval/results.json + PNGs

`gold_check` is the short version train.py runs at the end of every run on the embedded task: the trained
policy's samples on the held-out prompts against pi_ref's cached samples (same prompts, settings and seed).
"""
import json
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch

import checkpoint
import data
import oracle
import tokenization
from common import check_ranges, parse_config, quiet_transformers
from embedded import REFERENCE_SAMPLES, gold_reward
from models import batch_logps, forward_with_reward, load_model, load_reward_model, pair_logps, sample_completions


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


# ============================================================================================================
# Sampling, log-probs and rewards of policies on held-out prompts
# ============================================================================================================
@dataclass
class EvalConfig:
    policies: str = ""             # comma-separated run directories (or their checkpoint/ folders) to evaluate
    names: str = ""                # comma-separated labels for the policies; default: the run directory names
    data: str = "embedded"         # embedded or embedded-tiny: the task whose prompts, pi_ref and gold are used
    temperatures: str = "0,0.5,1.0"  # sampling temperatures (0 = greedy: one sample per prompt suffices)
    ood_temperatures: str = ""     # temperatures for the out-of-distribution prompts; empty = --temperatures
    samples: int = 4               # samples per prompt and temperature (the win rate compares sample j with sample j)
    prompts: int = 200             # held-out prompts per set (in distribution, and out of distribution)
    seed: int = 1234               # sampling seed, the same for every policy
    oracle: str = ""               # an Oracle directory for the mean Oracle reward; empty = the task's default Oracle
    out: str = "eval"              # where results.json and the PNG plots go


LIMITS = {"samples": "[1, inf)", "prompts": "[1, inf)", "seed": "[0, inf)"}   # common.check_ranges


def check_config(cfg):
    """Every option checked before any work starts (ranges, temperatures, the policy list)."""
    check_ranges(cfg, LIMITS)
    for flag in ("temperatures", "ood_temperatures"):
        for t in filter(None, getattr(cfg, flag).split(",")):
            try:
                ok = float(t) >= 0 and float(t) == float(t)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"--{flag} must be comma-separated numbers >= 0 (0 = greedy); got {t!r}")
    if not [p for p in cfg.policies.split(",") if p]:
        raise ValueError("give at least one trained policy: --policies runs/dpo-...,runs/drdo-...")
    for p in filter(None, cfg.policies.split(",")):
        if not os.path.isdir(p):
            raise ValueError(f"--policies: {p} is not a directory (a run directory, or a checkpoint directory)")


@torch.no_grad()
def completion_logps(model, pairs, pad_id, batch_size=64):
    """Summed log pi(completion | prompt) of each (prompt_ids, completion_ids) -> (N,) float64."""
    model.eval()
    return torch.cat([batch_logps(model, tokenization.collate_completions(pairs[i:i + batch_size], pad_id))[0].double()
                      for i in range(0, len(pairs), batch_size)])


@torch.no_grad()
def oracle_rewards(model, pairs, pad_id, batch_size=64):
    """The Oracle's reward R(x, y) of each (prompt_ids, completion_ids) -> (N,) float64."""
    out = []
    for i in range(0, len(pairs), batch_size):
        b = tokenization.collate_completions(pairs[i:i + batch_size], pad_id)
        out.append(forward_with_reward(model, b["input_ids"], b["attention_mask"])[1].double())
    return torch.cat(out)


@torch.no_grad()
def preference_accuracy(policy, reference, examples, pad_id):
    """Held-out implicit-reward accuracy: share of pairs with log pi/pi_ref (y_w) > log pi/pi_ref (y_l)
    (ties count half; pi = pi_ref gives exactly 0.5) -> (accuracy, standard error)."""
    def logps(model):
        model.eval()
        c, r = zip(*[pair_logps(model, tokenization.collate(examples[i:i + 32], pad_id))[:2]
                     for i in range(0, len(examples), 32)])
        return torch.cat(c).double(), torch.cat(r).double()
    pc, pr = logps(policy)
    rc, rr = logps(reference)
    h = (pc - rc) - (pr - rr)                                                   # (N,)
    acc = (h > 0).double() + 0.5 * (h == 0).double()
    return acc.mean().item(), (acc.std() / math.sqrt(len(acc))).item()


def gold_check(model, tokenizer, task, log=print):
    """Sample the trained policy on the held-out prompts with pi_ref's cached settings and seed, and compare
    the gold rewards sample by sample with pi_ref's cached samples (paired_comparison)."""
    ref = task["reference_eval_prompts"]
    s = REFERENCE_SAMPLES
    comps = sample_completions(model.cpu(), tokenizer, [r["prompt"] for r in ref], s["n"], s["temperature"],
                               task["stats"]["task"]["max_new_tokens"], seed=s["seed"],
                               desc="sampling held-out prompts")
    res = paired_comparison([gold_reward(c) for c in comps], [r["gold"] for r in ref])
    res["examples"] = [{"prompt": r["prompt"], "policy": c[0], "reference": r["completions"][0]}
                       for r, c in zip(ref[:3], comps[:3])]
    log(f"held-out check ({res['prompts']} prompts x {res['samples_per_prompt']} samples, gold = VADER "
        f"sentiment): policy {res['policy_gold']:+.3f} vs pi_ref {res['reference_gold']:+.3f}, gain "
        f"{res['gain']:+.3f} +- {res['gain_se']:.3f}; win {res['win']:.0%} / tie {res['tie']:.0%} / "
        f"loss {res['loss']:.0%} (win rate {res['win_rate']:.3f})")
    for ex in res["examples"]:
        log(f"  {ex['prompt']!r}\n     policy: {ex['policy']!r}\n     pi_ref: {ex['reference']!r}")
    return res


def load_policy(path):
    """A run directory (its newest checkpoint) or a checkpoint directory -> (model, tokenizer)."""
    return load_model(checkpoint.latest(path) or path)


def evaluate(cfg, log=print):
    """Every policy and pi_ref on the same prompts, temperatures and seeds -> results dict (see module doc)."""
    from tqdm.auto import tqdm

    paths = [p for p in cfg.policies.split(",") if p]
    if not paths:
        raise ValueError("give at least one trained policy: --policies runs/dpo-...,runs/drdo-...")
    names = [n for n in cfg.names.split(",") if n] or [os.path.basename(p.rstrip("/")) for p in paths]
    if len(names) != len(paths):
        raise ValueError(f"--names has {len(names)} labels for {len(paths)} policies")
    train_ds, test_ds, task = data.load_splits(cfg.data, log=log)
    if task is None:
        raise ValueError(f"evaluate.py judges with the embedded task's gold reward; --data must be embedded or "
                         f"embedded-tiny (got {cfg.data!r})")
    models = {"pi_ref": load_model(task["reference"])}
    for name, path in zip(names, paths):
        models[name] = load_policy(path)
    tokenizer = models["pi_ref"][1]
    for name, (_, tok) in models.items():
        if tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"policy {name!r} uses a different tokenizer from pi_ref; the KL and win-rate "
                             "estimates need samples scored by both models, so evaluate policies of one task")
    pad = tokenizer.pad_token_id
    if cfg.oracle:
        judge = load_reward_model(cfg.oracle).eval()
    else:
        members, _ = oracle.ensure_oracles(oracle.OracleConfig(data=cfg.data), train_ds, test_ds,
                                           task["reference"], log=log)
        judge = load_reward_model(members[0]).eval()
    test_ex, _ = tokenization.tokenize_dataset(tokenizer, test_ds, 128, 64, log=log)
    results = {"config": asdict(cfg), "task": task["dir"], "sets": {}, "preference_accuracy": {}}
    for name, (model, _) in models.items():
        acc, se = preference_accuracy(model, models["pi_ref"][0], test_ex, pad)
        results["preference_accuracy"][name] = {"accuracy": acc, "se": se, "pairs": len(test_ex)}
    max_new = task["stats"]["task"]["max_new_tokens"]
    temps = [float(t) for t in cfg.temperatures.split(",")]
    ood_temps = [float(t) for t in (cfg.ood_temperatures or cfg.temperatures).split(",")]
    jobs = [("in_distribution", t) for t in temps] + [("out_of_distribution", t) for t in ood_temps]
    bar = tqdm(total=len(jobs) * len(models), desc="evaluate", disable=None)
    for set_name, temp in jobs:
        prompts = task["eval_prompts" if set_name == "in_distribution" else "ood_prompts"][:cfg.prompts]
        n = 1 if temp == 0 else cfg.samples
        gold, ids = {}, {}
        row = results["sets"].setdefault(set_name, {}).setdefault(f"T={temp:g}", {"policies": {}, "head_to_head": {}})
        for name, (model, _) in models.items():
            texts, pid = sample_completions(model, tokenizer, prompts, n, temp, max_new, seed=cfg.seed,
                                            return_ids=True)
            gold[name] = [gold_reward(c) for c in texts]
            ids[name] = [(p, c) for p, comps in pid for c in comps]
            kl, kl_se = float("nan"), float("nan")
            if temp == 1:       # only untempered samples are draws from pi, so only they estimate KL(pi||pi_ref)
                kl, kl_se = monte_carlo_kl(completion_logps(model, ids[name], pad),
                                           completion_logps(models["pi_ref"][0], ids[name], pad))
            o = oracle_rewards(judge, ids[name], pad)
            stats = paired_comparison(gold[name], gold["pi_ref"])
            stats.update(repetition_stats([t for comps in texts for t in comps]))
            stats["gold_per_prompt"] = [sum(g) / len(g) for g in gold[name]]     # for recomputing any statistic
            stats.update(kl=kl, kl_se=kl_se, oracle_reward=o.mean().item(),
                         oracle_reward_se=(o.view(len(prompts), n).mean(1).std() / math.sqrt(len(prompts))).item(),
                         example=texts[0][0])
            row["policies"][name] = stats
            bar.update()
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                row["head_to_head"][f"{a} vs {b}"] = paired_comparison(gold[a], gold[b])
    bar.close()
    return results


def print_table(results, log=print):
    for set_name, by_temp in results["sets"].items():
        for temp, row in by_temp.items():
            log(f"\n{set_name}, {temp}")
            log(f"  {'policy':<28} {'gold':>15} {'win/tie/loss vs pi_ref':>24} {'KL(pi||ref)':>13} {'Oracle R':>9}"
                f" {'distinct-2':>10} {'repeats':>8}")
            for name, s in row["policies"].items():
                log(f"  {name:<28} {s['policy_gold']:+.3f} +- {s['policy_gold_se']:.3f} "
                    f"{s['win']:>9.0%} /{s['tie']:>4.0%} /{s['loss']:>4.0%}   {s['kl']:>7.2f} +- {s['kl_se']:<5.2f}"
                    f"{s['oracle_reward']:>+8.2f} {s['distinct2']:>10.3f} {s['repetition']:>8.0%}")
            for pair, s in row["head_to_head"].items():
                log(f"  head to head {pair}: win {s['win']:.0%} / tie {s['tie']:.0%} / loss {s['loss']:.0%}, "
                    f"gold difference {s['gain']:+.3f} +- {s['gain_se']:.3f}")
    log("\nheld-out preference accuracy (implicit reward log pi/pi_ref): " + ", ".join(
        f"{n} {a['accuracy']:.3f} +- {a['se']:.3f}" for n, a in results["preference_accuracy"].items()))


def plot(results, out):
    """reward_vs_kl.png (gold against KL, one point per temperature) and win_rate.png (against temperature)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for set_name, by_temp in results["sets"].items():
        temps = list(by_temp)
        names = list(by_temp[temps[0]]["policies"])
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        t1 = by_temp.get("T=1")
        for name in names:
            pts = [by_temp[t]["policies"][name] for t in temps]
            if t1 is not None:                                    # KL is estimated at temperature 1 only
                p = t1["policies"][name]
                ax[0].errorbar([p["kl"]], [p["policy_gold"]], xerr=[p["kl_se"]], yerr=[p["policy_gold_se"]],
                               marker="o", label=name, capsize=2)
            if name != "pi_ref":
                ax[1].errorbar([float(t[2:]) for t in temps], [p["win_rate"] for p in pts],
                               yerr=[p["win_rate_se"] for p in pts], marker="o", label=name, capsize=2)
        ax[0].set(xlabel="KL(pi || pi_ref), nats per completion", ylabel="mean gold reward (VADER)",
                  title=f"gold reward vs KL, temperature 1 ({set_name})")
        ax[1].axhline(0.5, color="grey", lw=0.8)
        ax[1].set(xlabel="sampling temperature", ylabel="win rate vs pi_ref (ties = 1/2)",
                  title=f"win rate vs temperature ({set_name})")
        for a in ax:
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{set_name}.png"), dpi=110)
        plt.close(fig)


def main(argv=None):
    cfg = parse_config(EvalConfig, argv, description="Gold-judged evaluation of trained policies.")
    quiet_transformers()
    try:
        check_config(cfg)
        results = evaluate(cfg)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, cfg.out)
    print_table(results)
    print(f"\nwritten: {cfg.out}/results.json, {cfg.out}/in_distribution.png, {cfg.out}/out_of_distribution.png")
    return results


if __name__ == "__main__":
    main()
