# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Online and iterative preference optimization on the policy's own samples, and how far the annotator can be trusted
#
# The iterative / online family (iterative DPO, DNO, SPPO, INPO, MNPO, accelerated PO, EGPO, online DRDO) trains on
# samples of the policy itself, labelled by an annotator: here the DRDO Oracle, a reward model trained once on the
# offline pairs and then frozen. The policy is optimised against the Oracle, not against the truth, so the question
# every such run must answer is the one of Gao et al. and of "Scaling Laws for Reward Model Overoptimization in Direct
# Alignment Algorithms" (Rafailov et al., arXiv 2406.02900): as the policy moves away from pi_ref (KL), does the
# **gold** reward follow the **annotator's** reward, or does it stop and fall while the annotator's keeps rising?
# The embedded task can answer it: its gold reward (VADER sentiment) is known, and nothing is trained on it.
#
# The study (online.py does every run; this file only chooses, runs and reports):
# * **Tuning apart from testing.** The task's 200 held-out prompts are split: the first 100 (dev) choose each
#   method's strength, the last 100 (test) give every number reported. Each method gets the same budget: two
#   strengths at seed 0 (dno and apo inherit DPO's beta: they are DPO against pi_t on other pairs / references).
# * **Iterative**: 3 rounds, 512 new prompts per round (rounds 1-2 cover the 1,053 training prompts once, round 3
#   starts over), K = 4 samples at temperature 1, one epoch per round; seeds 0-2 at the chosen strength.
# * **Offline**: train.py's dpo and drdo (2 epochs on the offline pairs, the task's defaults), judged alike.
# * **Per-step online** DPO, SPPO, DNO, INPO and DRDO at their chosen strengths: one optimizer step per round (16
#   prompts, 4 samples; 10% of a round's pairs are held out, as for any file; DNO's margin filter keeps more pairs,
#   so about two steps), 96 rounds: the same number of prompts as the 3 iterative rounds.
# * Every policy: 200 prompts x 4 samples at temperature 1 (the task's evaluation seed); gold and annotator rewards
#   paired with the starting policy's samples; KL(pi || pi_ref) by Monte Carlo on the same samples.
#
#     python tutorials/03_online.py            # the whole study (about an hour on 2 CPU cores; finished runs are skipped)
#     python tutorials/03_online.py --quick    # 1 seed, 2 rounds of 128 prompts: minutes
#     python tutorials/03_online.py --report   # the tables and the figure from what has finished
#
# On 2 cores, two single-threaded processes on disjoint methods finish sooner than one using both (how the committed
# results were made; the second skips the offline and per-step baselines; `--report` then reads everything):
#
#     OMP_NUM_THREADS=1 ONLINE_METHODS=dpo,sppo,inpo,mnpo,dno,apo python tutorials/03_online.py &
#     OMP_NUM_THREADS=1 ONLINE_METHODS=egpo,drdo ONLINE_BASELINES=0 python tutorials/03_online.py &
#
# (the committed results were made so, and their per-step runs of sppo, dno, inpo, drdo added afterwards by two more
# such processes with ONLINE_METHODS=dpo,sppo / dpo,dno / inpo,drdo and ONLINE_BASELINES=0: finished runs are
# skipped; dno and apo need dpo in the list, since they take its chosen beta)
#     python tutorials/03_online.py --report
#
# It writes tutorials/results/online.json (every number, per-prompt rewards included), online.md and
# tutorials/figures/online_overoptimization.png.

# %%
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

import torch  # noqa: E402

import evaluate  # noqa: E402
import stats  # noqa: E402
import online  # noqa: E402
import train  # noqa: E402
from common import parse_config, quiet_transformers  # noqa: E402
from config import Config, resolve  # noqa: E402

REPORT = "--report" in sys.argv                         # tables from finished runs only; nothing is run
QUICK = "--quick" in sys.argv or bool(os.environ.get("ONLINE_QUICK"))
DATA = os.environ.get("ONLINE_DATA", "embedded")          # the tests use embedded-tiny
OUT = os.environ.get("ONLINE_OUT", os.path.join("runs", "online_study" + ("_quick" if QUICK else "")))
SEEDS = [0] if QUICK else [0, 1, 2]
ROUNDS, PER_ROUND = (2, 128) if QUICK else (3, 512)
PER_STEP = 16                                             # prompts (and pairs) of a per-step round: one optimizer step
PER_STEP_METHODS = ("dpo", "sppo", "dno", "inpo", "drdo")  # also run per-step (DNO's margin pairs: ~2 steps a round)
PER_STEP_ROUNDS = int(os.environ.get("ONLINE_PER_STEP_ROUNDS", ROUNDS * PER_ROUND // PER_STEP))
RESULTS = os.environ.get("ONLINE_RESULTS", "tutorials/results")
FIGURES = os.environ.get("ONLINE_FIGURES", "tutorials/figures")
# name -> (online method, the flag of its strength, the two strengths tried on the dev prompts). dno and apo take
# DPO's chosen beta ("inherit"). The strengths bracket each loss's target scale around DPO's beta = 0.1 (README).
METHODS = {
    "dpo":   ("dpo", "--beta", [0.1, 0.3]),
    "sppo":  ("sppo", "--sppo_eta", [10.0, 100.0]),
    "inpo":  ("inpo", "--nash_eta", [0.1, 0.02]),
    "mnpo":  ("mnpo", "--nash_eta", [0.1, 0.02]),
    "egpo":  ("egpo", "--beta", [0.1, 0.3]),
    "drdo":  ("drdo", "--beta_r", [0.02, 0.005]),
    "dno":   ("dno", "--beta", "inherit"),
    "apo":   ("apo", "--beta", "inherit"),
}
if os.environ.get("ONLINE_METHODS"):                     # e.g. the test: ONLINE_METHODS=dpo,sppo
    METHODS = {k: v for k, v in METHODS.items() if k in os.environ["ONLINE_METHODS"].split(",")}
EVAL_PROMPTS = 64 if QUICK else 200                       # judged prompts (half dev, half test) x 4 samples
COMMON = ["--data", DATA, "--rounds", str(ROUNDS), "--prompts_per_round", str(PER_ROUND), "--samples", "4",
          "--eval_prompts", str(EVAL_PROMPTS), "--eval_samples", "4", "--keep_rounds", "2"]


def split(n):
    """(dev, test) prompt indices of the n judged prompts: the first half chooses, the second half reports."""
    return list(range(n // 2)), list(range(n // 2, n))


# %% [markdown]
# ## Runs
# Each run is one `python online.py ...` command (in-process here); its directory holds every round, and a
# finished run is read back, not repeated.

# %%
def online_run(name, method, flags, seed, extra=()):
    out = os.path.join(OUT, f"{name}-s{seed}")
    argv = [*COMMON, "--method", method, *flags, "--seed", str(seed), "--out", out, *extra]
    done = os.path.join(out, "online.json")
    if not os.path.exists(done) and REPORT:
        return None
    if not os.path.exists(done):
        print(f"\n=== python online.py {' '.join(argv)}", flush=True)
        t0 = time.time()
        online.main(argv)
        with open(os.path.join(out, "wall.json"), "w") as f:
            json.dump({"seconds": round(time.time() - t0, 1), "command": "python online.py " + " ".join(argv)}, f)
    with open(done) as f:
        return json.load(f)


def offline_run(method, seed):
    """train.py on the offline pairs, then judged by online.py's judge (same prompts, samples, annotator)."""
    out = os.path.join(OUT, f"offline-{method}-s{seed}")
    judged_path = os.path.join(out, "judged.json")
    if os.path.exists(judged_path):
        with open(judged_path) as f:
            return json.load(f)
    if REPORT:
        return None
    argv = ["--method", method, "--data", DATA, "--seed", str(seed), "--out", out, "--no-final_check"]
    print(f"\n=== python train.py {' '.join(argv)}", flush=True)
    summary = train.train(resolve(parse_config(Config, argv)))
    cfg = parse_config(online.OnlineConfig, [*COMMON, "--seed", str(seed)])
    train_ds, test_ds, task = online.offline_data(cfg, print)
    oracle_dir = online.annotator_oracle(cfg, train_ds, test_ds, task, print)
    start = online.model_path(cfg.model, task["reference"], out)
    annotator = online.load_annotator(cfg, online.load_model(start)[1], task, oracle_dir, print)
    prompts = [r["prompt"] for r in task["reference_eval_prompts"]][:cfg.eval_prompts]
    max_new = task["stats"]["task"]["max_new_tokens"]
    first = online.judged(cfg, os.path.join(out, "round-0"), start, start, prompts, annotator, task, max_new, print)
    now = online.judged(cfg, out, summary["checkpoint"], start, prompts, annotator, task, max_new, print)
    record = {"rounds": [evaluate.compare_judged(now, first) | {"round": 1}],
              "start": evaluate.compare_judged(first, first)}
    with open(judged_path, "w") as f:
        json.dump(record, f)
    return record


def dev_score(result):
    """The last round's gold gain on the dev prompts (the choice of strength reads nothing else)."""
    dev, _ = split(len(result["rounds"][-1]["gold_per_prompt"]))
    last, first = result["rounds"][-1]["gold_per_prompt"], result["start"]["gold_per_prompt"]
    return sum(last[i] - first[i] for i in dev) / len(dev)


def run_all():
    chosen, runs = {}, {}
    for name, (method, flag, values) in METHODS.items():
        if values == "inherit":
            values = [chosen["dpo"]]
        scores = {}
        for v in values:
            result = online_run(f"{name}-{flag[2:]}{v:g}", method, [flag, str(v)], 0)
            if result is not None:
                scores[v] = dev_score(result)
        if not scores:
            continue
        chosen[name] = max(scores, key=scores.get)
        print(f"{name}: dev gold gain by {flag}: {scores} -> {chosen[name]:g}", flush=True)
        for seed in SEEDS:
            runs[name, seed] = online_run(f"{name}-{flag[2:]}{chosen[name]:g}", method, [flag, str(chosen[name])], seed)
    for seed in SEEDS:
        for name in PER_STEP_METHODS:                    # per-step online: the same method, one step per round
            if name in chosen:
                method, flag, _ = METHODS[name]
                runs[f"{name} per-step", seed] = online_run(
                    f"{name}-perstep", method, [flag, str(chosen[name])], seed,
                    ["--rounds", str(PER_STEP_ROUNDS), "--prompts_per_round", str(PER_STEP), "--batch_size",
                     str(PER_STEP), "--micro_batch_size", str(PER_STEP), "--judge_every", str(PER_STEP_ROUNDS)])
        for method in ("dpo", "drdo") if os.environ.get("ONLINE_BASELINES", "1") == "1" else ():
            runs[f"offline {method}", seed] = offline_run(method, seed)
    return chosen, {k: v for k, v in runs.items() if v is not None}


# %% [markdown]
# ## Statistics
# Every interval is a 95% percentile bootstrap over seeds AND test prompts together (each resample draws seeds with
# replacement, then prompts with replacement; the statistic is the mean over both). Method-vs-method differences are
# paired: the same prompts, the same evaluation samples' seeds, the same training seeds.

# %%
def per_prompt_gain(record, start, key, idx):
    """(len(idx),) per-prompt gain of a judged round over the starting policy."""
    return [record[f"{key}_per_prompt"][i] - start[f"{key}_per_prompt"][i] for i in idx]


def summarise(chosen, runs):
    names = list(dict.fromkeys(name for name, _ in runs))
    any_run = next(iter(runs.values()))
    _, test = split(len(any_run["start"]["gold_per_prompt"]))
    rows = {}
    for name in names:
        seeds = [runs[name, s] for s in SEEDS if (name, s) in runs]
        curve = []
        for t in range(len(seeds[0]["rounds"])):
            judged = [r["rounds"][t] for r in seeds if "kl" in r["rounds"][t]]
            if not judged:
                continue
            point = {"round": seeds[0]["rounds"][t]["round"],
                     "kl": [j["kl"] for j in judged], "kl_mean": sum(j["kl"] for j in judged) / len(judged)}
            for key in ("gold", "annotator"):
                tables = [per_prompt_gain(j, r["start"], key, test) for j, r in zip(judged, seeds)]
                point[f"{key}_gain"], point[f"{key}_ci"] = stats.bootstrap_seeds_prompts(tables)
            point["repetition"] = sum(j["repetition"] for j in judged) / len(judged)
            curve.append(point)
        rows[name] = {"curve": curve, "seeds": len(seeds), "strength": chosen.get(name.split()[0]),
                      "wall_seconds": [json.load(open(os.path.join(r["out"], "wall.json")))["seconds"]
                                       for r in seeds if "out" in r and os.path.exists(os.path.join(r["out"], "wall.json"))]}
    # paired: each method's last round against iterative DPO's last round, per seed and test prompt
    if not all(("dpo", s) in runs for s in SEEDS):
        return rows
    base = [runs["dpo", s] for s in SEEDS]
    for name in names:
        if name == "dpo" or not all((name, s) in runs for s in SEEDS):
            continue
        diffs = [[a - b for a, b in zip(per_prompt_gain(runs[name, s]["rounds"][-1], runs[name, s]["start"], "gold", test),
                                        per_prompt_gain(d["rounds"][-1], d["start"], "gold", test))]
                 for s, d in zip(SEEDS, base)]
        rows[name]["vs_dpo_gold"] = stats.bootstrap_seeds_prompts(diffs)
    return rows


def seconds_split(runs):
    """Where a round's time goes: sampling, labelling, training, judging (iterative runs, every round)."""
    total = {"sample": 0.0, "label": 0.0, "train": 0.0, "judge": 0.0}
    tokens, gen = 0, 0.0
    for (name, _), r in runs.items():
        if name.startswith("offline"):
            continue
        for rd in r["rounds"]:
            for k in total:
                total[k] += rd["seconds"][k]
            tokens += rd["sampling"]["generated_tokens"]
            gen += rd["sampling"]["sample_seconds"]
    whole = sum(total.values())
    return {k: round(v / whole, 3) for k, v in total.items()} | {"generation_tokens_per_second": round(tokens / gen, 1)}


# %% [markdown]
# ## Report: tables and the over-optimization figure

# %%
def report(chosen, runs):
    rows = summarise(chosen, runs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"command": "python tutorials/03_online.py" + (" --quick" if QUICK else ""), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
            "seeds": SEEDS, "rounds": ROUNDS, "prompts_per_round": PER_ROUND, "chosen": chosen,
            "cost": seconds_split(runs),
            "wall_seconds": sum(sum(r["wall_seconds"]) for r in rows.values())}
    raw = {f"{name}|s{seed}": r for (name, seed), r in runs.items()}
    name = "online_quick" if QUICK else "online"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "summary": rows, "runs": raw}, f, indent=1)
    lines = [f"# Online and iterative methods on the embedded task ({'quick' if QUICK else 'full'})", "",
             f"Command: `{meta['command']}`; commit {commit}; {meta['machine']}; wall time of the runs "
             f"{meta['wall_seconds'] / 60:.0f} min. Seeds {SEEDS}; {ROUNDS} rounds of {PER_ROUND} prompts x 4 samples. "
             "Strengths chosen on the 100 dev prompts (last round's gold gain); every number below on the 100 test "
             "prompts x 4 samples; [95% bootstrap over seeds and prompts].", "",
             "| method | strength | round | KL (nats) | gold gain | annotator gain | repetition |",
             "|---|---|---|---|---|---|---|"]
    for n, row in rows.items():
        for p in row["curve"]:
            lines.append(f"| {n} | {row['strength'] if row['strength'] is not None else ''} | {p['round']} | "
                         f"{p['kl_mean']:.1f} | {p['gold_gain']:+.3f} [{p['gold_ci'][0]:+.3f}, {p['gold_ci'][1]:+.3f}] | "
                         f"{p['annotator_gain']:+.3f} [{p['annotator_ci'][0]:+.3f}, {p['annotator_ci'][1]:+.3f}] | "
                         f"{p['repetition']:.3f} |")
    lines += ["", "Paired against iterative DPO (last round, gold gain, test prompts): difference [95% bootstrap]", ""]
    for n, row in rows.items():
        if "vs_dpo_gold" in row:
            m, (lo, hi) = row["vs_dpo_gold"]
            lines.append(f"- {n}: {m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    c = meta["cost"]
    lines += ["", f"Cost (all online rounds): sampling {c['sample']:.0%}, labelling {c['label']:.0%}, training "
              f"{c['train']:.0%}, judging {c['judge']:.0%}; generation {c['generation_tokens_per_second']:.0f} tokens/s."]
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, os.path.join(FIGURES, f"online_overoptimization{'_quick' if QUICK else ''}.png"))
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for n, row in rows.items():
        curve = row["curve"]
        if not curve:
            continue
        kl = [0.0] + [p["kl_mean"] for p in curve]
        style = "o-" if len(curve) > 1 else "s"
        for ax, key in zip(axes, ("gold", "annotator")):
            y = [0.0] + [p[f"{key}_gain"] for p in curve]
            ax.plot(kl, y, style, label=n, ms=4)
    for ax, title in zip(axes, ("gold reward gain (VADER; nothing trains on it)", "annotator (Oracle) reward gain")):
        ax.set_xlabel("KL(pi || pi_ref), nats per sequence")
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("gain over pi_ref (test prompts)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Over-optimization, round by round (points: rounds 0..T; mean over seeds)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


# %%
if __name__ == "__main__":
    quiet_transformers()
    report(*run_all())
