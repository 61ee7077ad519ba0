"""Evaluation of trained policies against pi_ref (and each other) on held-out prompts of any preference data.

Every policy and pi_ref are sampled on the SAME prompts with the SAME decoding settings and seeds, and sample j
of one policy is compared with sample j of the other, by a judge (judges.py, --judge):
    gold        the embedded task's gold reward r*(y) = VADER sentiment of the completion (its default): nothing
                trained ever sees it, so the comparison is not circular
    oracle      the DRDO Oracle (the default for other data): the paper's UltraFeedback protocol. It is
                CIRCULAR for DRDO (and distill / e-DPO), which were trained to match its reward gaps; the output
                and results.json say so
    a reward model   a directory or hub id that loads with AutoModelForSequenceClassification: an independent judge
Prompts: the embedded task's held-out (in distribution) and negative-tweet (out of distribution) prompts; for any
other data, the distinct prompts of its held-out split (--data, --data_config, --data_split), rendered as in
training (tokenization.py: chat template and generation prompt, one BOS), in order, the first --prompts.

Statistics (P prompts, n samples per prompt; all standard errors are over prompts, the unit that was drawn):
    reward           mean over prompts of the mean judge reward of the n samples
    gain             mean over prompts of (policy mean reward - reference mean reward); SE of that paired
                     difference; `gain_ci`: a 95% percentile-bootstrap interval over prompts (seeded)
    win / tie / loss share of the P * n sample pairs (j-th vs j-th) where the policy's reward is higher / equal /
                     lower; ties are reported separately (59% of pi_ref samples have no sentiment word: gold 0)
    win rate         win + tie / 2 (identical policies give exactly 0.5); SE over prompts; `win_rate_ci` bootstrap
    KL(pi || pi_ref) Monte-Carlo: mean over samples y ~ pi of log pi(y|x) - log pi_ref(y|x) (summed over the
                     completion's tokens); 0 for identical policies; nats per sequence. Only at temperature 1:
                     greedy or tempered samples are not draws from pi, and their mean log-ratio is not a KL
                     (it can be negative); other temperatures report NaN.
    distinct-2       mean over samples of (distinct word bigrams / word bigrams) of the completion: 1 = no
                     bigram repeats; low values are loops ("the best of the best of the best")
    repetition       share of samples in which some word trigram occurs twice or more
The last two watch for reward hacking: the gold reward is a lexicon (and a reward model can be gamed too), and a
policy far from pi_ref can raise it by repeating words; read them at temperature 1 and greedy (temperature 0).
Bootstrap: `--bootstrap` resamples of the P prompts with replacement (seed --seed, the same resamples for every
comparison), the 2.5% and 97.5% quantiles of the resampled mean.

    python evaluate.py --policies runs/dpo-...,runs/drdo-... --names dpo,drdo     # writes eval/results.json + PNGs
    python evaluate.py --data my_pairs.jsonl --reference runs/sft --policies runs/dpo,runs/drdo \
        --judge path/to/reward_model                                            # any data, an independent judge

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
import judges
import oracle
import tokenization
from common import check_ranges, parse_config, quiet_transformers
from embedded import REFERENCE_SAMPLES, gold_reward
from models import batch_logps, load_model, pair_logps, sample_completions, to_device
from stats import monte_carlo_kl, paired_comparison, repetition_stats



# ============================================================================================================
# Sampling, log-probs and rewards of policies on held-out prompts
# ============================================================================================================
@dataclass
class EvalConfig:
    policies: str = ""             # comma-separated run directories (or their checkpoint/ folders) to evaluate
    names: str = ""                # comma-separated labels for the policies; default: the run directory names
    data: str = "embedded"         # prompts and held-out pairs: embedded(-tiny), ultrafeedback, tldr, hh, a file, a hub id
    data_config: str = ""          # hub dataset's configuration (hh: its subset, e.g. helpful-base); empty = the source's default
    data_split: str = ""           # hub dataset's training split, optionally ",<held-out split>" (prompts come from the held-out one)
    reference: str = ""            # pi_ref (the policies' starting point: a run, checkpoint or model name); empty = the task's
    judge: str = ""                # gold | oracle (circular for DRDO) | dir or hub id of a seq-cls reward model; empty = gold if any, else oracle
    oracle: str = ""               # Oracle member directory for --judge oracle; empty = the default Oracle on --data (cached; pi_ref backbone)
    temperatures: str = "0,0.5,1.0"  # sampling temperatures (0 = greedy: one sample per prompt suffices)
    ood_temperatures: str = ""     # temperatures for the out-of-distribution prompts (embedded task); empty = --temperatures,
                                   # none = skip the out-of-distribution prompts
    samples: int = 4               # samples per prompt and temperature (the win rate compares sample j with sample j)
    prompts: int = 200             # held-out prompts per set (in distribution, and out of distribution)
    max_new_tokens: int = 0        # tokens sampled per completion; 0 = the embedded task's (32), else 128
    max_length: int = 512          # prompt + response tokens of held-out pairs (preference accuracy); embedded task: 128
    max_prompt_length: int = 256   # prompt tokens kept (its end, and its BOS) for sampling and pairs; embedded task: 64
    bootstrap: int = 1000          # bootstrap resamples of the prompts for the 95% intervals (0 = none)
    seed: int = 1234               # sampling and bootstrap seed, the same for every policy
    out: str = "eval"              # where results.json and the PNG plots go


LIMITS = {"samples": "[1, inf)", "prompts": "[1, inf)", "seed": "[0, inf)", "max_new_tokens": "[0, inf)",
          "max_length": "[2, inf)", "max_prompt_length": "[1, inf)", "bootstrap": "[0, inf)"}   # common.check_ranges


def check_config(cfg):
    """Every option checked before any work starts (ranges, temperatures, the policy list)."""
    check_ranges(cfg, LIMITS)
    for flag in ("temperatures", "ood_temperatures"):
        for t in filter(None, getattr(cfg, flag).split(",")):
            if flag == "ood_temperatures" and t == "none":
                continue
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
    """Summed log pi(completion | prompt) of each (prompt_ids, completion_ids) -> (N,) float64 on the CPU (the
    batches go to the model's device)."""
    model.eval()
    return torch.cat([batch_logps(model, to_device(tokenization.collate_completions(pairs[i:i + batch_size], pad_id),
                                                   model.device))["logps"].double().cpu()
                      for i in range(0, len(pairs), batch_size)])


@torch.no_grad()
def judge_policy(policy_path, ref_path, prompts, judge, samples, max_new_tokens, max_prompt_length, seed, gold=False,
                 device=torch.device("cpu")):
    """A policy's samples on held-out prompts, judged (online.py, after every round): temperature 1, so the mean
    log-ratio to pi_ref on the same samples is a KL estimate. -> {"annotator": (P, n) judge rewards, "gold": (P, n)
    gold rewards (embedded task) or None, "logratio": (P * n,) log pi - log pi_ref, distinct2, repetition}."""
    model, tokenizer = load_model(policy_path)
    ref = load_model(ref_path)[0].to(device) if ref_path != policy_path else model
    model.to(device)
    ids = tokenization.prompt_ids_for_sampling(tokenizer, prompts, max_prompt_length)
    texts, sampled = sample_completions(model, tokenizer, ids, samples, 1.0, max_new_tokens, seed=seed,
                                        desc="judging held-out prompts", return_ids=True)
    flat = [(p, c) for p, comps in sampled for c in comps]
    pad = tokenizer.pad_token_id
    logratio = completion_logps(model, flat, pad) - completion_logps(ref, flat, pad)                    # (P * n,)
    return {"annotator": judge.rewards(prompts, texts, flat), "gold": [gold_reward(c) for c in texts] if gold else None,
            "logratio": logratio.tolist(), **repetition_stats([c for comps in texts for c in comps])}


def compare_judged(now, start):
    """Two judge_policy results on the same prompts and seeds (a policy's and its start's): KL, the paired gains of
    both rewards (paired_comparison) and each prompt's mean reward (for paired tests later)."""
    kl, kl_se = monte_carlo_kl(now["logratio"], [0.0] * len(now["logratio"]))
    out = {"kl": kl, "kl_se": kl_se, "distinct2": now["distinct2"], "repetition": now["repetition"]}
    for key in ("annotator", "gold"):
        if now[key] is not None:
            c = paired_comparison(now[key], start[key])
            out |= {f"{key}_reward": c["policy_reward"], f"{key}_gain": c["gain"], f"{key}_gain_se": c["gain_se"],
                    f"{key}_win_rate": c["win_rate"], f"{key}_per_prompt": [sum(r) / len(r) for r in now[key]]}
    return out


@torch.no_grad()
def preference_accuracy(policy, reference, examples, pad_id):
    """Held-out implicit-reward accuracy: share of pairs with log pi/pi_ref (y_w) > log pi/pi_ref (y_l)
    (ties count half; pi = pi_ref gives exactly 0.5) -> (accuracy, standard error)."""
    def logps(model):
        model.eval()
        c, r = zip(*[pair_logps(model, tokenization.collate(examples[i:i + 32], pad_id))["logps"]
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
        f"sentiment): policy {res['policy_reward']:+.3f} vs pi_ref {res['reference_reward']:+.3f}, gain "
        f"{res['gain']:+.3f} +- {res['gain_se']:.3f}; win {res['win']:.0%} / tie {res['tie']:.0%} / "
        f"loss {res['loss']:.0%} (win rate {res['win_rate']:.3f})")
    for ex in res["examples"]:
        log(f"  {ex['prompt']!r}\n     policy: {ex['policy']!r}\n     pi_ref: {ex['reference']!r}")
    return res


def resolve_run(path):
    """A run directory -> its newest checkpoint; a checkpoint directory or a model name as it is."""
    return (checkpoint.latest(path) if os.path.isdir(path) else None) or path


def load_policy(path):
    """A run directory (its newest checkpoint), a checkpoint directory or a model name -> (model, tokenizer)."""
    return load_model(resolve_run(path))


def held_out_prompts(test_ds, k):
    """The first k distinct prompts of the held-out pairs (strings or message lists), in order."""
    seen, out = set(), []
    for p in test_ds["prompt"]:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out[:k]


def evaluate(cfg, log=print):
    """Every policy and pi_ref on the same prompts, temperatures and seeds -> results dict (see module doc)."""
    from tqdm.auto import tqdm

    paths = [p for p in cfg.policies.split(",") if p]
    if not paths:
        raise ValueError("give at least one trained policy: --policies runs/dpo-...,runs/drdo-...")
    names = [n for n in cfg.names.split(",") if n] or [os.path.basename(p.rstrip("/")) for p in paths]
    if len(names) != len(paths):
        raise ValueError(f"--names has {len(names)} labels for {len(paths)} policies")
    train_ds, test_ds, task = data.load_splits(cfg.data, log=log, config=cfg.data_config, split=cfg.data_split)
    reference = cfg.reference or (task and task["reference"])
    if not reference:
        raise ValueError("--reference: name pi_ref, the model the policies started from (e.g. the SFT run or "
                         "checkpoint); only the embedded task has a default")
    models = {"pi_ref": load_policy(reference)}
    for name, path in zip(names, paths):
        models[name] = load_policy(path)
    tokenizer = models["pi_ref"][1]
    for name, (_, tok) in models.items():
        if tok.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"policy {name!r} uses a different tokenizer from pi_ref; the KL and win-rate "
                             "estimates need samples scored by both models, so evaluate policies of one task")
    pad = tokenizer.pad_token_id
    max_length, max_prompt = (128, 64) if task else (cfg.max_length, cfg.max_prompt_length)
    spec = cfg.judge or ("gold" if task else "oracle")

    def oracle_dir():                    # --oracle, else the default Oracle on this data (trained once, cached)
        if cfg.oracle:
            return cfg.oracle
        ocfg = oracle.OracleConfig(model="embedded" if task else resolve_run(reference), data=cfg.data,
                                   data_config=cfg.data_config,
                                   data_split=cfg.data_split, max_length=max_length, max_prompt_length=max_prompt)
        return oracle.ensure_oracles(ocfg, train_ds, test_ds, task and task["reference"], log=log)[0][0]
    judge = judges.load_judge(spec, tokenizer, task, oracle_dir() if spec == "oracle" else None, log=log)
    # the embedded task also reports the Oracle's mean reward beside the gold judge (as before)
    extra = judges.load_judge("oracle", tokenizer, task, oracle_dir(), log) if task and spec == "gold" else None
    test_ex, _ = tokenization.tokenize_dataset(tokenizer, test_ds, max_length, max_prompt, log=log)
    test_ex = test_ex[:512]
    results = {"config": asdict(cfg), "task": task and task["dir"], "sets": {}, "preference_accuracy": {},
               "judge": {"name": judge.name, "kind": judge.kind, "note": judge.note,
                         "circular_for": list(judges.CIRCULAR) if judge.circular else []}}
    for name, (model, _) in models.items():
        acc, se = preference_accuracy(model, models["pi_ref"][0], test_ex, pad)
        results["preference_accuracy"][name] = {"accuracy": acc, "se": se, "pairs": len(test_ex)}
    max_new = cfg.max_new_tokens or (task["stats"]["task"]["max_new_tokens"] if task else 128)
    temps = [float(t) for t in cfg.temperatures.split(",")]
    if task:
        ood_temps = [] if cfg.ood_temperatures == "none" else \
            [float(t) for t in (cfg.ood_temperatures or cfg.temperatures).split(",")]
        sets = {"in_distribution": task["eval_prompts"], "out_of_distribution": task["ood_prompts"]}
        jobs = [("in_distribution", t) for t in temps] + [("out_of_distribution", t) for t in ood_temps]
    else:
        sets = {"in_distribution": held_out_prompts(test_ds, cfg.prompts)}
        jobs = [("in_distribution", t) for t in temps]
    bar = tqdm(total=len(jobs) * len(models), desc="evaluate", disable=None)
    for set_name, temp in jobs:
        prompts = sets[set_name][:cfg.prompts]
        inputs = prompts if task else tokenization.prompt_ids_for_sampling(tokenizer, prompts, max_prompt)
        n = 1 if temp == 0 else cfg.samples
        reward, ids = {}, {}
        row = results["sets"].setdefault(set_name, {}).setdefault(f"T={temp:g}", {"policies": {}, "head_to_head": {}})
        for name, (model, _) in models.items():
            texts, pid = sample_completions(model, tokenizer, inputs, n, temp, max_new, seed=cfg.seed,
                                            return_ids=True)
            ids[name] = [(p, c) for p, comps in pid for c in comps]
            reward[name] = judge.rewards(prompts, texts, ids[name])                     # (P, n)
            kl, kl_se, kl_per_prompt = float("nan"), float("nan"), None
            if temp == 1:       # only untempered samples are draws from pi, so only they estimate KL(pi||pi_ref)
                lp, lp_ref = completion_logps(model, ids[name], pad), completion_logps(models["pi_ref"][0], ids[name], pad)
                kl, kl_se = monte_carlo_kl(lp, lp_ref)
                # samples are prompt-major (sample j of prompt i at i * n + j): the estimate on each prompt alone,
                # so a bootstrap over prompts can carry KL's own uncertainty (tutorials/02_reproduction.py)
                kl_per_prompt = (torch.as_tensor(lp, dtype=torch.float64) - torch.as_tensor(lp_ref, dtype=torch.float64)
                                 ).view(len(prompts), n).mean(1).tolist()
            stats = paired_comparison(reward[name], reward["pi_ref"], cfg.bootstrap, cfg.seed)
            stats.update(repetition_stats([t for comps in texts for t in comps]))
            stats["reward_per_prompt"] = [sum(r) / len(r) for r in reward[name]]     # for recomputing any statistic
            stats.update(kl=kl, kl_se=kl_se, kl_per_prompt=kl_per_prompt, example=texts[0][0], rewards=reward[name],
                         samples=texts)   # (P, n) each
            if extra is not None:
                o = torch.tensor(extra.rewards(prompts, texts, ids[name]), dtype=torch.float64)   # (P, n)
                stats.update(oracle_reward=o.mean().item(),
                             oracle_reward_se=(o.mean(1).std() / math.sqrt(len(prompts))).item())
            row["policies"][name] = stats
            bar.update()
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                row["head_to_head"][f"{a} vs {b}"] = paired_comparison(reward[a], reward[b], cfg.bootstrap, cfg.seed)
    bar.close()
    return results


def print_table(results, log=print):
    """The results as one table per prompt set and temperature, with the judge's note first."""
    judge = results["judge"]
    log(f"\njudge: {judge['name']}: {judge['note']}")
    ci = (lambda s, key: f" [{s[key][0]:+.3f}, {s[key][1]:+.3f}]" if key in s else "")
    for set_name, by_temp in results["sets"].items():
        for temp, row in by_temp.items():
            log(f"\n{set_name}, {temp}")
            log(f"  {'policy':<28} {'reward':>15} {'win/tie/loss vs pi_ref':>24} {'win rate':>9} {'KL(pi||ref)':>13}"
                f"{' Oracle R' if any('oracle_reward' in s for s in row['policies'].values()) else ''}"
                f" {'distinct-2':>10} {'repeats':>8}")
            for name, s in row["policies"].items():
                log(f"  {name:<28} {s['policy_reward']:+.3f} +- {s['policy_reward_se']:.3f} "
                    f"{s['win']:>9.0%} /{s['tie']:>4.0%} /{s['loss']:>4.0%}   {s['win_rate']:>7.3f}  "
                    f"{s['kl']:>7.2f} +- {s['kl_se']:<5.2f}"
                    + (f"{s['oracle_reward']:>+8.2f}" if "oracle_reward" in s else "")
                    + f" {s['distinct2']:>10.3f} {s['repetition']:>8.0%}")
            for name, s in row["policies"].items():
                if name != "pi_ref" and "gain_ci" in s:
                    log(f"  {name}: gain {s['gain']:+.3f} +- {s['gain_se']:.3f}, 95% bootstrap CI{ci(s, 'gain_ci')}; "
                        f"win rate {s['win_rate']:.3f} +- {s['win_rate_se']:.3f}, CI{ci(s, 'win_rate_ci')}")
            for pair, s in row["head_to_head"].items():
                log(f"  head to head {pair}: win {s['win']:.0%} / tie {s['tie']:.0%} / loss {s['loss']:.0%}, win rate "
                    f"{s['win_rate']:.3f} +- {s['win_rate_se']:.3f}, reward difference {s['gain']:+.3f} +- "
                    f"{s['gain_se']:.3f}{ci(s, 'gain_ci')}")
    log("\nheld-out preference accuracy (implicit reward log pi/pi_ref): " + ", ".join(
        f"{n} {a['accuracy']:.3f} +- {a['se']:.3f}" for n, a in results["preference_accuracy"].items()))
    if judge["circular_for"]:
        log(f"NOTE: {judge['note']}")


def plot(results, out):
    """<set>.png per prompt set: the judge's mean reward against KL at temperature 1, and the win rate against
    temperature."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judge = results["judge"]["name"] if results["judge"]["kind"] != "gold" else "gold: VADER"
    for set_name, by_temp in results["sets"].items():
        temps = list(by_temp)
        names = list(by_temp[temps[0]]["policies"])
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        t1 = by_temp.get("T=1")
        for name in names:
            pts = [by_temp[t]["policies"][name] for t in temps]
            if t1 is not None:                                    # KL is estimated at temperature 1 only
                p = t1["policies"][name]
                ax[0].errorbar([p["kl"]], [p["policy_reward"]], xerr=[p["kl_se"]], yerr=[p["policy_reward_se"]],
                               marker="o", label=name, capsize=2)
            if name != "pi_ref":
                ax[1].errorbar([float(t[2:]) for t in temps], [p["win_rate"] for p in pts],
                               yerr=[p["win_rate_se"] for p in pts], marker="o", label=name, capsize=2)
        ax[0].set(xlabel="KL(pi || pi_ref), nats per completion", ylabel=f"mean reward ({judge})",
                  title=f"reward vs KL, temperature 1 ({set_name})")
        ax[1].axhline(0.5, color="grey", lw=0.8)
        ax[1].set(xlabel="sampling temperature", ylabel="win rate vs pi_ref (ties = 1/2)",
                  title=f"win rate vs temperature ({set_name})")
        for a in ax:
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"{set_name}.png"), dpi=110)
        plt.close(fig)


def main(argv=None):
    cfg = parse_config(EvalConfig, argv, description="Evaluation of trained policies against pi_ref by a judge "
                                                     "(gold, the Oracle, or any sequence-classification reward model).")
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
    print(f"\nwritten: {cfg.out}/results.json, " + ", ".join(f"{cfg.out}/{name}.png" for name in results["sets"]))
    return results


if __name__ == "__main__":
    main()
