"""Online and iterative preference optimization: rounds of sample -> label -> train, on the policy's own samples.

One concept lives here: a ROUND. Round t starts from the policy pi_t (pi_1 = --model, the SFT model):
  1) sample   K completions (--samples) of each of the round's prompts from pi_t (--temperature; the sampler stops at
              EOS / end-of-turn as everywhere else: models.sample_completions)
  2) label    each completion's reward under the ANNOTATOR (--annotator): by default the DRDO Oracle, trained once on
              the offline pairs and then frozen (oracle.py); or the embedded task's gold reward (an UPPER BOUND: the
              policy then trains on the very reward it is judged by; never the default); or any reward model that
              loads with AutoModelForSequenceClassification (judges.py). With a Bradley-Terry annotator,
              P(y > y') = sigmoid(r(y) - r(y')), and each sample's win rate against pi_t is estimated over the K
              samples: P_hat(y_i > pi_t) = (1/K) sum_k P(y_i > y_k) (losses.win_rates)
  3) pairs    the round's training data, as the method asks: best vs worst of the K (iterative DPO, SPPO, INPO, ...),
              every pair past a reward margin (DNO), or two samples as drawn (EGPO); written to <round>/pairs.jsonl
              with each response's reward (chosen_score, rejected_score) and win rate
  4) train    one ordinary train.py run (train.train: the same loop, checkpoints, resume) from pi_t on those pairs,
              with the reference the method asks for: --ref_model pi_t (iterative DPO, DNO, SPPO, APO), or the
              original pi_ref plus pi_t / past iterates as --anchor_models (INPO, MNPO, APO's extrapolation). Their
              log-probs are cached like pi_ref's, keyed on each model's WEIGHTS (reference.reference_logps), so a
              new iterate is a new cache key: a stale hit across rounds cannot happen
  5) judge    pi_{t+1} on held-out prompts: the annotator's reward and the gold reward (embedded task) against
              KL(pi_{t+1} || pi_ref): the over-optimization curve, round by round (round 0 = the starting policy)
The per-step online mode (sample and label before every optimizer step, as TRL's OnlineDPOTrainer) is the same code
with one step per round: --prompts_per_round = --batch_size, --epochs 1 (README, "Online and iterative").
Under torchrun every rank samples and labels its share of each round's prompts and trains with DDP; rank 0 writes.

Methods (--method; each loss is a pure function in losses.py with its paper's equations):
    dpo       iterative DPO (Xu et al. 2023, arXiv 2312.16682): DPO on best-vs-worst, reference pi_t
    dno       DNO's practical version (Rosset et al., arXiv 2404.03715, Alg. 2, Eq. 13): DPO against pi_t on every
              (best, y) pair whose reward gap is at least --dno_margin standard deviations of the round's rewards
    dno_soft  DNO's general form (Alg. 1, Eq. 8): soft-target regression on the win-rate gap, reference pi_t
    sppo      SPPO (Wu et al., arXiv 2405.00675): per-sample squared loss on win rates, reference pi_t
    inpo      INPO (Zhang et al., arXiv 2407.00617): squared loss on the pi_ref / pi_t mixture
    mnpo      TD-MNPO (Wu et al., arXiv 2509.23102): INPO against a weighted history of iterates (--mnpo_history)
    apo       Accelerated PO (He et al., arXiv 2410.06293): DPO against (1 + a) S_t - a S_{t-1} (Nesterov momentum)
    egpo      EGPO (Zhou et al., arXiv 2503.08942): online IPO against pi_ref with an extragradient round
    nash_mp   Nash-MP (arXiv 2505.19731): two INPO-style proximal steps per round (mirror prox) [reconstructed]
    drdo      online DRDO (arXiv 2410.08458): DRDO's Oracle distillation + focal term on the policy's own samples,
              the Oracle as teacher and annotator
OFS-DPO (arXiv 2406.05534) is not a round of sampling at all (a stream of offline pairs, two LoRA modules): it is
train.py's `--method ofs_dpo --lora_r 8` (losses.ofs_dpo_loss).

Extragradient rounds (egpo, nash_mp): from pi_t, a half round on pi_t's samples gives pi_{t+1/2}; then pi_{t+1/2}
is sampled and labelled, and the full round trains FROM pi_t on those samples (the opponent moved, the start did
not). Each half is an ordinary train.py run in <round>/half.
NOTE (deviates from paper): EGPO's code takes its extragradient step per optimizer step (snapshot, half step on fresh
samples, restore); here per round (README deviation 48). Nash-MP is reconstructed from its abstract as the same
extragradient round with INPO's proximal loss (deviation 49). MNPO is TD-MNPO with equal weights over the last
--mnpo_history iterates (deviation 50). Online DRDO's procedure is ours: the DRDO paper points to this use of its
Oracle without describing one (deviation 51). SPPO's and DNO's win rates come from the annotator's Bradley-Terry
probabilities (deviation 46).

Layout (every stage is written atomically and skipped when present, so a stopped run continues where it was;
inside a training stage, train.py's --resume continues from its last checkpoint):
    <out>/online_config.json
    <out>/round-0/eval.json                      the starting policy, judged like every round
    <out>/round-<t>/[half/]pairs.jsonl           the round's labelled pairs (+ round.json: its sampling statistics)
    <out>/round-<t>/[half/]train/                the round's train.py run; its final checkpoint is pi_{t+1}
    <out>/round-<t>/eval.json, summary.json      the judgement, then the round's record (its presence = round done)
    <out>/online.json                            every round's record

    python online.py --method dpo                          # 3 rounds of iterative DPO on the embedded task
    python online.py --method sppo --rounds 3 --samples 4
    python online.py --method dpo --prompts_per_round 8 --epochs 1 --rounds 40      # per-step online DPO
    python online.py --method inpo --annotator gold        # the upper bound: trained on the judge's own reward

NOTE (deviates from paper): DNO's filter is stated on GPT-4's 6-point rubric (a positive scoring 5-6, a negative at
least 2 points below, 1 when the positive is the student's own sample); a Bradley-Terry reward has no absolute scale,
so here the positive is each prompt's best sample and the margin is counted in standard deviations of the round's
rewards (--dno_margin); DNO's gold responses and replay of earlier rounds' pairs are not used.
NOTE (deviates from paper): the papers sample new prompts every round from large prompt sets, use K = 5-8 samples,
7B models and learning rates near 5e-7; here the embedded task's prompts (all of them each round unless
--prompts_per_round), K = 4 and the task's learning rate. Each round is a fresh train.py run: a new AdamW state and
warmup + cosine schedule per round, as in the iterative papers' per-round fine-tuning. Samples are decoded to text and
re-tokenized for training like any record (a sample cut at max_new_tokens gains the closing token it never sampled).
"""
import json
import os
import sys
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, fields, replace

import torch

import checkpoint
import conditions
import data
import distributed
import evaluate
import judges
import oracle
import tokenization
from common import check_ranges, parse_config, quiet_transformers, write_json, write_jsonl
from config import LIMITS, Config, resolve
from embedded import REFERENCE_SAMPLES
from losses import win_rates
from models import load_model, sample_completions

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")     # sampling and judging; train.py its own
SINGLE = distributed.Dist()                                               # one process

# What each online method is, in the terms of a round:
#   loss           the train.py / losses.py registry entry trained on the round's pairs
#   pairs          best_worst (highest vs lowest reward of the K), margin (DNO: the best vs every sample at least
#                  --dno_margin below it), as_drawn (EGPO: samples 0 and 1, unselected)
#   reference      --ref_model of the round: "pi_t" (its start) or "pi_ref" (the original reference)
#   anchors        --anchor_models: "pi_t", "history" (pi_t, pi_{t-1}, ... newest first), "previous" (pi_{t-1};
#                  pi_t in round 1), or "" (none)
#   extragradient  two halves per round (EGPO, Nash-MP): the opponent moves first, the start does not
Method = namedtuple("Method", "loss pairs reference anchors extragradient")
METHODS = {
    "dpo":      Method("dpo", "best_worst", "pi_t", "", False),
    "dno":      Method("dpo", "margin", "pi_t", "", False),
    "dno_soft": Method("dno", "best_worst", "pi_t", "", False),
    "sppo":     Method("sppo", "best_worst", "pi_t", "", False),
    "inpo":     Method("inpo", "best_worst", "pi_ref", "pi_t", False),
    "mnpo":     Method("mnpo", "best_worst", "pi_ref", "history", False),
    "apo":      Method("apo_accel", "best_worst", "pi_t", "previous", False),
    "egpo":     Method("online_ipo", "as_drawn", "pi_ref", "", True),
    "nash_mp":  Method("inpo", "best_worst", "pi_ref", "pi_t", True),
    "drdo":     Method("drdo", "best_worst", "pi_t", "", False),      # reference-free; pi_t is never read
}


@dataclass
class OnlineConfig(Config):
    method: str = "dpo"            # online method: dpo dno dno_soft sppo inpo mnpo apo egpo nash_mp drdo (online.py's docstring)
    epochs: float = 1.0            # passes over each round's pairs (the iterative papers train one epoch per round)
    rounds: int = 3                # rounds of sample -> label -> train (>= 1)
    samples: int = 4               # K: completions sampled per prompt per round (>= 2)
    temperature: float = 1.0       # sampling temperature of the rounds' completions (> 0)
    max_new_tokens: int = 0        # tokens sampled per completion; 0 = the embedded task's (32), else 128
    annotator: str = "oracle"      # oracle (trained once on the offline pairs, frozen) | gold (embedded task; an upper
                                   # bound) | a directory or hub id of an AutoModelForSequenceClassification reward model
    prompts_per_round: int = 0     # prompts sampled per round, the next ones each round (0 = every training prompt)
    dno_margin: float = 1.0        # dno: keep (best, y) when r(best) - r(y) >= margin x the std of the round's rewards
    mnpo_history: int = 2          # mnpo: past iterates played against (pi_t, pi_{t-1}, ...; the code's max_history_t)
    eval_prompts: int = 200        # held-out prompts judged after every round (0 = no judgement)
    eval_samples: int = 4          # samples per held-out prompt (temperature 1, so the KL estimate is valid)
    judge_every: int = 1           # judge every N-th round (and always the last); per-step runs judge rarely
    keep_rounds: int = 0           # delete the checkpoints of rounds older than the last N once done (0 = keep all;
                                   # per-step runs write one per optimizer step)


ONLINE_LIMITS = {**LIMITS, "rounds": "[1, inf)", "samples": "[2, inf)", "temperature": "(0, inf)",
                 "max_new_tokens": "[0, inf)", "prompts_per_round": "[0, inf)", "dno_margin": "[0, inf)",
                 "mnpo_history": "[1, inf)", "eval_prompts": "[0, inf)", "eval_samples": "[1, inf)",
                 "judge_every": "[1, inf)", "keep_rounds": "[0, inf)"}


# ============================================================================================================
# Checks, before anything is written
# ============================================================================================================
def check(cfg):
    """Every option of an online run checked at once -> the resolved train.py Config the rounds start from."""
    if cfg.method not in METHODS:
        raise ValueError(f"--method {cfg.method!r} is not an online method; choose one of: {' '.join(METHODS)} "
                         "(offline methods run with train.py)")
    check_ranges(cfg, ONLINE_LIMITS)
    loss, anchors = METHODS[cfg.method].loss, METHODS[cfg.method].anchors
    if cfg.annotator == "gold" and cfg.data not in ("embedded", "embedded-tiny"):
        raise ValueError(f"--annotator gold needs a gold reward, which only the embedded task has (--data {cfg.data} "
                         "has none); use --annotator oracle or a reward model directory")
    if cfg.annotator not in ("oracle", "gold") and not os.path.isdir(cfg.annotator) and "/" not in cfg.annotator:
        raise ValueError(f"--annotator {cfg.annotator!r}: not oracle, gold, a directory, or a hub id (owner/name) of "
                         "an AutoModelForSequenceClassification reward model")
    if cfg.method == "drdo" and cfg.annotator != "oracle":
        raise ValueError("online DRDO distils the Oracle's rewards: it needs --annotator oracle (or --oracle_dir with "
                         "--annotator oracle to give a trained one)")
    if cfg.oracle_dir:
        oracle.saved_members(cfg.oracle_dir)                       # names the fix when it is not an Oracle
    if cfg.lora_r:
        raise ValueError("online.py hands each round's full checkpoint to the next as --model; train without --lora_r")
    if cfg.flip or cfg.split != "all" or cfg.max_pairs:
        print("online: --flip / --split / --max_pairs apply to the offline pairs the Oracle annotator is trained on, "
              "not to the rounds' own pairs")
    base = Config(**{f.name: getattr(cfg, f.name) for f in fields(Config)})
    base = replace(base, method=loss, anchor_models="embedded" if anchors else "", out=cfg.out or "unused",
                   oracle_dir=cfg.oracle_dir if loss == "drdo" else "")
    return replace(resolve(base), anchor_models="", out="")       # lr's default follows --model, once


def default_out(cfg):
    return cfg.out or os.path.join("runs", f"online-{cfg.method}-{os.path.basename(cfg.model.rstrip('/'))}-"
                                           f"{os.path.basename(cfg.data)}-{cfg.annotator if cfg.annotator in ('oracle', 'gold') else 'rm'}"
                                           f"-s{cfg.seed}")


# ============================================================================================================
# The annotator and the prompts
# ============================================================================================================
def offline_data(cfg, log):
    """The offline pairs (with the run's condition) -> (train_ds, test_ds, task)."""
    train_ds, test_ds, task = data.load_splits(cfg.data, seed=cfg.seed, log=log, config=cfg.data_config,
                                               split=cfg.data_split)
    return conditions.apply_condition(train_ds, cfg.split, cfg.flip, cfg.max_pairs, seed=cfg.seed), test_ds, task


def annotator_oracle(cfg, train_ds, test_ds, task, log):
    """The Oracle annotator's directory: --oracle_dir, else trained once on the offline pairs (cached)."""
    if cfg.oracle_dir:
        return os.path.dirname(oracle.saved_members(cfg.oracle_dir)[0])
    ocfg = oracle.OracleConfig(model=cfg.oracle_model or cfg.model, data=cfg.data, data_config=cfg.data_config,
                               data_split=cfg.data_split, alpha=cfg.oracle_alpha, ensemble=1, epochs=cfg.oracle_epochs,
                               lr=cfg.oracle_lr, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                               seed=cfg.seed)
    members, _ = oracle.ensure_oracles(ocfg, train_ds, test_ds, task and task["reference"], log=log)
    return os.path.dirname(members[0])


def load_annotator(cfg, tokenizer, task, oracle_dir, log):
    """--annotator -> a judges.py judge: rewards(prompts, texts, pairs) -> (P, K) lists."""
    spec = cfg.annotator
    if spec == "oracle":
        return judges.load_judge("oracle", tokenizer, task, oracle.saved_members(oracle_dir)[0], log)
    if spec == "gold":
        log("annotator: the GOLD reward. An upper bound: the policy trains on the reward it is judged by")
    return judges.load_judge(spec, tokenizer, task, log=log)


def model_path(name, task_ref, out):
    """A model the rounds can hand to train.py without the embedded task's files: `embedded` is the task's pi_ref
    directory; `tiny` (tests) is written once to <out>/start-tiny; any other name or path as it is."""
    if name == "embedded":
        return task_ref
    if name != "tiny":
        return name
    path = os.path.join(out, "start-tiny")
    if not os.path.isdir(path):
        import shutil
        from models import save_model
        tmp = f"{path}.tmp-{os.getpid()}"
        save_model(*load_model(name, task_ref), tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def distinct_prompts(ds):
    return evaluate.held_out_prompts(ds, len(ds))


def round_prompts(prompts, cfg, t):
    """Round t's prompts: every one, or the t-th block of --prompts_per_round (wrapping around): new prompts each
    round, as DNO's and SPPO's non-overlapping splits."""
    n = cfg.prompts_per_round
    if not n:
        return prompts
    start = (t - 1) * n
    return [prompts[(start + i) % len(prompts)] for i in range(n)]


# ============================================================================================================
# 1-3) Sample, label, build the round's pairs
# ============================================================================================================
def build_pairs(prompts, texts, rewards, how, margin=0.0):
    """K samples per prompt and their rewards (P, K) -> the round's records. how: best_worst (the highest against the
    lowest reward), margin (the best against every sample at least `margin` below it), as_drawn (samples 0 and 1,
    the higher-rewarded as chosen; ties kept: EGPO's target is then 0). Pairs of equal texts are left out; each
    record carries both responses' rewards and win rates P_hat(y > pi_t)."""
    R = torch.tensor(rewards, dtype=torch.float64)                              # (P, K)
    W = win_rates(R)                                                            # (P, K)
    rows = []
    for p, (prompt, comps) in enumerate(zip(prompts, texts)):
        r = R[p]
        order = sorted(range(len(comps)), key=lambda k: (-r[k].item(), k))     # best first, ties by index
        if how == "best_worst":
            chosen = [(order[0], order[-1])] if r[order[0]] > r[order[-1]] else []
        elif how == "margin":
            chosen = [(order[0], k) for k in order[1:] if r[order[0]] - r[k] >= max(margin, 1e-12)]
        else:
            chosen = [(0, 1) if r[0] >= r[1] else (1, 0)]
        for i, j in chosen:
            if comps[i] == comps[j]:
                continue
            rows.append({"prompt": prompt, "chosen": comps[i], "rejected": comps[j],
                         "chosen_score": r[i].item(), "rejected_score": r[j].item(),
                         "chosen_win_rate": W[p, i].item(), "rejected_win_rate": W[p, j].item()})
    return rows


def sample_and_label(cfg, policy_path, prompts, annotator, max_new, seed, where, log, d=SINGLE):
    """Sample pi_t, label, write <where>/pairs.jsonl and round.json (skipped when both exist) -> statistics.
    Under torchrun each rank samples and labels its share of the prompts (every world-th, seeded by seed and its
    rank), rank 0 gathers them in prompt order and writes the round's pairs."""
    stats_path, pairs_path = os.path.join(where, "round.json"), os.path.join(where, "pairs.jsonl")
    if d.from_rank0(os.path.exists(stats_path) and os.path.exists(pairs_path)):
        with open(stats_path) as f:
            return json.load(f)
    model, tokenizer = load_model(policy_path)
    model.to(d.device if d.world > 1 else DEVICE)
    mine = list(range(d.rank, len(prompts), d.world))                         # this rank's prompts
    ids = tokenization.prompt_ids_for_sampling(tokenizer, [prompts[i] for i in mine], cfg.max_prompt_length)
    t0 = time.time()
    texts, sampled = sample_completions(model, tokenizer, ids, cfg.samples, cfg.temperature, max_new,
                                        seed=seed + 7919 * d.rank, return_ids=True,
                                        desc=f"sampling {len(mine)} prompts x {cfg.samples}")
    t_sample = time.time() - t0
    flat = [(p, c) for p, comps in sampled for c in comps]
    t0 = time.time()
    rewards = annotator.rewards([prompts[i] for i in mine], texts, flat)         # (P_rank, K)
    parts = d.gather({"idx": mine, "texts": texts, "rewards": rewards, "sample_seconds": t_sample,
                      "label_seconds": time.time() - t0, "tokens": sum(len(c) for _, comps in sampled for c in comps)})
    if d.rank == 0:
        texts, rewards = [None] * len(prompts), [None] * len(prompts)
        for part in parts:
            for j, i in enumerate(part["idx"]):
                texts[i], rewards[i] = part["texts"][j], part["rewards"][j]
        spread = torch.tensor(rewards, dtype=torch.float64).std().item()       # DNO's margin, in reward units
        rows = build_pairs(prompts, texts, rewards, METHODS[cfg.method].pairs, cfg.dno_margin * spread)
        tokens, t_sample = sum(p["tokens"] for p in parts), max(p["sample_seconds"] for p in parts)
        stats = {"prompts": len(prompts), "samples": cfg.samples, "pairs": len(rows), "generated_tokens": tokens,
                 "sample_seconds": round(t_sample, 3), "label_seconds": round(max(p["label_seconds"] for p in parts), 3),
                 "generation_tokens_per_second": round(tokens / max(t_sample, 1e-9), 1),
                 "annotator_reward_mean": torch.tensor(rewards, dtype=torch.float64).mean().item(), "seed": seed,
                 "prompts_per_rank": [len(p["idx"]) for p in parts]}
        if len(rows) >= 2:
            write_jsonl(rows, pairs_path)
            write_json(stats, stats_path)
    stats = d.from_rank0(stats if d.rank == 0 else None)
    if stats["pairs"] < 2:
        raise ValueError(f"{where}: only {stats['pairs']} pair(s) from {len(prompts)} prompts (every sample tied or "
                         "equal); raise --samples, --temperature or --prompts_per_round")
    log(f"  sampled {len(prompts)} x {cfg.samples} ({stats['generated_tokens']} tokens, "
        f"{stats['generation_tokens_per_second']:.0f} tok/s), labelled in {stats['label_seconds']:.1f} s -> "
        f"{stats['pairs']} pairs; annotator reward of the samples {stats['annotator_reward_mean']:+.3f}")
    return stats


# ============================================================================================================
# 4) Train
# ============================================================================================================
def train_round(base, cfg, start, where, pairs_dir, ref_model, anchors, oracle_dir, log, d=SINGLE):
    """One train.py run from `start` on <pairs_dir>/pairs.jsonl into <where>/train -> its summary (read back when
    the run is already done; resumed from its last checkpoint when it stopped part-way)."""
    import train
    out = os.path.join(where, "train")
    done = os.path.join(out, "summary.json")
    if d.from_rank0(os.path.exists(done)):
        with open(done) as f:
            return json.load(f)
    rcfg = replace(base, data=os.path.join(pairs_dir, "pairs.jsonl"), data_config="", data_split="", split="all",
                   flip=0.0, max_pairs=0, model=start, ref_model=ref_model, anchor_models=",".join(anchors),
                   oracle_dir=oracle_dir if base.method == "drdo" else "", out=out, final_check=False,
                   resume=d.from_rank0(checkpoint.latest(out) is not None), resume_from="", stop_after=cfg.stop_after)
    return train.train(rcfg, log)             # under torchrun: every rank, DDP (train.py joins online.py's group)


def references(history, pi_ref, method, max_history):
    """(--ref_model, --anchor_models) of a round whose start is history[-1]. history: [pi_1, ..., pi_t]; method: a
    METHODS row."""
    ref_model = history[-1] if method.reference == "pi_t" else pi_ref
    anchor_list = {"": [], "pi_t": [history[-1]], "previous": [history[-2] if len(history) > 1 else history[-1]],
                   "history": history[::-1][:max_history]}[method.anchors]
    return ref_model, anchor_list


# ============================================================================================================
# 5) Judge (evaluate.judge_policy: annotator reward, gold reward and KL(pi || pi_ref) on held-out prompts)
# ============================================================================================================
def judged(cfg, where, policy_path, ref_path, prompts, annotator, task, max_new, log=print):
    """evaluate.judge_policy once per round, kept in <where>/eval.json: samples at temperature 1 with the task's
    evaluation seed, so every round (and round 0, the start) is sampled alike and paired with the others."""
    path = os.path.join(where, "eval.json")
    if not os.path.exists(path):
        write_json(evaluate.judge_policy(policy_path, ref_path, prompts, annotator, cfg.eval_samples, max_new,
                                         cfg.max_prompt_length, seed=REFERENCE_SAMPLES["seed"], gold=bool(task),
                                         device=DEVICE), path)
    with open(path) as f:
        return json.load(f)



# ============================================================================================================
# The rounds
# ============================================================================================================
def run_online(cfg, log=print):
    """Every round in turn -> the run's record (also <out>/online.json). cfg: an OnlineConfig. Under torchrun every
    rank runs this: rank 0 builds the caches, writes and judges; the ranks share out the sampling and labelling of
    each round (sample_and_label) and its training (train.py's DDP, in the process group joined here)."""
    base = check(cfg)
    d = distributed.setup()
    try:
        return rounds(cfg, base, d, log if d.rank == 0 else (lambda *_: None))
    finally:
        distributed.teardown(d)


def rounds(cfg, base, d, log):
    out = default_out(cfg)
    if d.rank == 0:
        os.makedirs(out, exist_ok=True)
        write_json(asdict(cfg) | {"out": out}, os.path.join(out, "online_config.json"))
    with d.main_first():                      # rank 0 builds the task, the Oracle and a `tiny` start; the others read
        train_ds, test_ds, task = offline_data(cfg, log)
        task_ref = task and task["reference"]
        oracle_dir = annotator_oracle(cfg, train_ds, test_ds, task, log) if cfg.annotator == "oracle" else ""
        start_model = model_path(cfg.model, task_ref, out)
        ref_path = model_path(cfg.ref_model, task_ref, out) if cfg.ref_model else start_model
    tokenizer = load_model(start_model)[1]
    annotator = load_annotator(cfg, tokenizer, task, oracle_dir, log)
    max_new = cfg.max_new_tokens or (task["stats"]["task"]["max_new_tokens"] if task else 128)
    prompts = distinct_prompts(train_ds)
    perm = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    prompts = [prompts[i] for i in perm]
    eval_prompts = ([r["prompt"] for r in task["reference_eval_prompts"]] if task else
                    evaluate.held_out_prompts(test_ds, len(test_ds)))[:cfg.eval_prompts]
    loss, extragradient = METHODS[cfg.method].loss, METHODS[cfg.method].extragradient
    log(f"online {cfg.method}: {cfg.rounds} round(s) of {len(round_prompts(prompts, cfg, 1))} prompts x {cfg.samples} "
        f"samples, annotator {cfg.annotator}, loss {loss}{' (extragradient rounds)' if extragradient else ''}; "
        f"{len(eval_prompts)} held-out prompts judged per round{f'; {d.world} processes' if d.world > 1 else ''}; {out}")

    def judge_at(where, policy):              # rank 0 judges, the others wait
        now = (judged(cfg, where, policy, ref_path, eval_prompts, annotator, task, max_new, log)
               if eval_prompts and d.rank == 0 else None)
        d.barrier()
        return now
    start = judge_at(os.path.join(out, "round-0"), start_model)
    records, history = [], [start_model]
    for t in range(1, cfg.rounds + 1):
        where = os.path.join(out, f"round-{t}")
        done = os.path.join(where, "summary.json")
        if d.from_rank0(os.path.exists(done)):
            with open(done) as f:
                record = json.load(f)
            log(f"round {t}: already done ({where})")
        else:
            log(f"round {t} of {cfg.rounds}: from {history[-1]}")
            t0 = time.time()
            ps = round_prompts(prompts, cfg, t)
            seed = cfg.seed * 1000 + t
            ref_model, anchors = references(history, ref_path, METHODS[cfg.method], cfg.mnpo_history)
            halves = []
            if extragradient:      # the half step: pi_t's samples -> pi_{t+1/2}; then the opponent is pi_{t+1/2}
                half = os.path.join(where, "half")
                halves.append(sample_and_label(cfg, history[-1], ps, annotator, max_new, seed, half, log, d))
                hs = train_round(base, cfg, history[-1], half, half, ref_model, anchors, oracle_dir, log, d)
                if "stopped_at" in hs:
                    return {"stopped_at": [t, "half", hs["stopped_at"]]}
                opponent = hs["checkpoint"]
                seed += 500
            else:
                opponent = history[-1]
            stats = sample_and_label(cfg, opponent, ps, annotator, max_new, seed, where, log, d)
            t_train = time.time()
            summary = train_round(base, cfg, history[-1], where, where, ref_model, anchors, oracle_dir, log, d)
            if "stopped_at" in summary:                # --stop_after: as if killed; a rerun continues here
                return {"stopped_at": [t, summary["stopped_at"]]}
            train_seconds = time.time() - t_train
            t_judge = time.time()
            now = judge_at(where, summary["checkpoint"]) if t % cfg.judge_every == 0 or t == cfg.rounds else None
            record = None
            if d.rank == 0:
                record = {"round": t, "policy": summary["checkpoint"], "start": history[-1], "opponent": opponent,
                          "ref_model": ref_model, "anchor_models": anchors, "pairs": stats["pairs"],
                          "train_loss_start": summary["objective_start"], "train_loss_end": summary["objective_end"],
                          "processes": d.world, "sampling": stats, "half_sampling": halves[0] if halves else None,
                          "seconds": {"sample": stats["sample_seconds"] + sum(h["sample_seconds"] for h in halves),
                                      "label": stats["label_seconds"] + sum(h["label_seconds"] for h in halves),
                                      "train": round(train_seconds, 1), "judge": round(time.time() - t_judge, 1),
                                      "round": round(time.time() - t0, 1)},
                          **(evaluate.compare_judged(now, start) if now else {})}
                write_json(record, done)
            record = d.from_rank0(record)
            if now:
                log(f"round {t}: KL {record['kl']:.2f} nats; annotator gain {record['annotator_gain']:+.3f} "
                    f"+- {record['annotator_gain_se']:.3f}"
                    + (f"; gold gain {record['gold_gain']:+.3f} +- {record['gold_gain_se']:.3f}" if task else ""))
        records.append(record)
        history.append(record["policy"])
        if cfg.keep_rounds and t > max(cfg.keep_rounds, cfg.mnpo_history) and d.rank == 0:   # the history read is kept
            import shutil
            old = os.path.join(out, f"round-{t - max(cfg.keep_rounds, cfg.mnpo_history)}")
            for part in ("train", os.path.join("half", "train")):
                shutil.rmtree(os.path.join(old, part), ignore_errors=True)
    result = {"method": cfg.method, "loss": loss, "annotator": cfg.annotator, "oracle_dir": oracle_dir, "rounds": records,
              "start": evaluate.compare_judged(start, start) if start else None, "out": out}
    if d.rank == 0:
        write_json(result, os.path.join(out, "online.json"))
    d.barrier()
    return result


def main(argv=None):
    cfg = parse_config(OnlineConfig, argv, description=__doc__.split("\n\n")[0])
    try:
        quiet_transformers()
        return run_online(cfg)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, MemoryError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
