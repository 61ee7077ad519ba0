"""One plain PyTorch loop for every preference-optimization method in losses.LOSSES, plus sft.

    python train.py --method drdo                      # the embedded offline task, ~5 min on 2 CPU cores
    python train.py --method dpo --flip 0.2            # DPO with 20% of the training labels swapped
    python train.py --method drdo --model opt-125m     # a real model (needs the hub), bf16 on a GPU
    python train.py --method dpo --benchmark 5         # step time, tokens/s and peak memory of 5 steps
    python train.py --help                             # every option, with its meaning and typical range

What happens, in order (each stage says what it is doing and caches what it builds):
 1) data     the preference pairs (default: the embedded task of data.py, built once), then the condition:
             --split deterministic/nondeterministic (margin terciles) and --flip p (seeded label noise)
 2) Oracle   methods that need Oracle rewards (distill, edpo, drdo) get them from oracle.py: the Oracle (an
             ensemble for edpo) is trained once on the SAME noisy training pairs and its scores cached
 3) pi_ref   DPO-family methods: the reference log-probs of every pair are computed once, cached on disk, and
             the reference model is freed; reference-free methods (drdo, simpo, orpo, sft) never load it
 4) loop     AdamW on fp32 master weights, warmup then cosine decay, gradient clipping, gradient
             accumulation, bf16 autocast on CUDA (on CPU with --bf16), held-out evaluation, atomic checkpoints
 5) check    on the embedded task: samples of the trained policy on held-out prompts against pi_ref's, judged
             by the gold reward nothing was trained on (mean gold, win rate)

The model is the policy pi_theta; for drdo (student_reward=head) it also carries a scalar reward head
(PAPER_NOTES A.5.1), saved beside the checkpoint as reward_head.pt.
NOTE (deviates from paper): the DRDO paper does not state how micro-batches, schedules or clipping were set;
the values here are common DPO practice (TRL/the DPO reference), not the paper's.
"""
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

import data
import evaluate
import oracle
from losses import LOSSES, sequence_logps

METHODS = sorted(LOSSES) + ["sft"]


@dataclass
class Config:
    # --- what to train ---------------------------------------------------------------------------------------
    method: str = "drdo"           # one of: dpo cdpo rdpo ipo hinge simpo orpo distill edpo pdpo drdo sft
    model: str = "embedded"        # embedded (the task's pi_ref), tiny, opt-125m, opt-350m, opt-1.3b, smollm2-135m, hub id, path
    data: str = "embedded"         # embedded, embedded-tiny, ultrafeedback, tldr, a .jsonl/.json/.parquet/.csv, a hub id
    ref_model: str = ""            # pi_ref; empty = the starting policy (--model), which is the SFT model on the embedded task
    oracle_model: str = ""         # Oracle backbone; empty = --model
    # --- data condition --------------------------------------------------------------------------------------
    split: str = "all"             # all | deterministic | nondeterministic (top / bottom tercile of |gold margin|)
    flip: float = 0.0              # share of training pairs whose labels are swapped (label noise; 0, 0.2, 0.4)
    max_pairs: int = 0             # use at most this many training pairs (0 = all)
    max_length: int = 128          # prompt + response tokens (512-1024 for real data)
    max_prompt_length: int = 64    # prompt tokens kept (its end) when a pair is too long
    # --- loss hyper-parameters (each method reads the ones it needs) -----------------------------------------
    beta: float = 0.1              # KL strength of the DPO family (0.01-0.5)
    label_smoothing: float = 0.1   # cdpo / rdpo: assumed label-flip rate (0-0.5)
    kl_coef: float = 0.1           # edpo / pdpo: weight of the forward-KL term (0-1)
    aggregate: str = "batch_min"   # edpo: batch_min | example_min | mean over ensemble members
    ensemble: int = 0              # Oracle members; 0 = 3 for edpo, 1 otherwise
    simpo_beta: float = 2.0        # simpo: reward scale (2-10)
    simpo_gamma: float = 1.0       # simpo: target margin (0.5-1.5)
    orpo_beta: float = 0.1         # orpo: weight of the odds-ratio term (0.1-1)
    alpha: float = 1.0             # drdo: weight of the focal preference term (0.1-1)
    gamma: float = 2.0             # drdo: focal exponent (0 = plain log-loss; 1-5)
    score: str = "unlikelihood"    # drdo: inner score z: unlikelihood | likelihood | odds (PAPER_NOTES A.5.2)
    student_reward: str = "head"   # drdo: head (scalar head on the policy) | logprob (mean log-prob as reward)
    oracle_alpha: float = 0.1      # Oracle: weight of NLL(y_w) in its loss (Eq. 6; 0.01-0.1)
    oracle_epochs: int = 3         # Oracle: passes over the training pairs
    oracle_lr: float = 5e-4        # Oracle: AdamW learning rate (~1e-5 for 100M+ backbones)
    # --- optimisation ----------------------------------------------------------------------------------------
    lr: float = 0.0                # AdamW learning rate; 0 = 1e-4 for embedded/tiny models, 1e-6 for pretrained ones
    batch_size: int = 8            # pairs per optimizer step
    micro_batch_size: int = 8      # pairs per forward pass; batch_size / micro_batch_size = accumulation steps
    epochs: float = 2.0            # passes over the training pairs (DPO collapses past ~3 on the embedded task)
    warmup: float = 0.1            # share of steps with linear warmup, then cosine decay to 0
    weight_decay: float = 0.0      # AdamW weight decay
    max_grad_norm: float = 1.0     # gradient clipping (0 = off)
    bf16: bool = False             # bf16 autocast; always on with CUDA, opt-in on CPU (50x slower on AVX2 CPUs)
    seed: int = 0                  # data order, initialisation of new heads, label flips
    # --- outputs ---------------------------------------------------------------------------------------------
    out: str = ""                  # run directory; empty = runs/<method>-<model>-<data>-<split>-flip<p>-s<seed>
    eval_every: int = 50           # evaluate on held-out pairs every N steps (0 = only at the end)
    save_every: int = 50           # checkpoint every N steps (always at the end)
    resume: bool = False           # continue from <out>/checkpoint
    final_check: bool = True       # embedded task: sample held-out prompts and compare with pi_ref by gold reward
    benchmark: int = 0             # > 0: time this many steps on synthetic full-length batches, print, and exit
    stop_after: int = 0            # testing aid: stop (as if killed) after this many steps, without a final save


def resolve(cfg):
    """Fill the defaults that depend on other fields, and reject impossible combinations with one clear error."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown --method {cfg.method!r}; choose one of: {' '.join(METHODS)}")
    if cfg.batch_size < 1 or cfg.micro_batch_size < 1 or cfg.batch_size % cfg.micro_batch_size:
        raise ValueError(f"--batch_size {cfg.batch_size} must be a positive multiple of --micro_batch_size "
                         f"{cfg.micro_batch_size} (accumulation steps = batch_size / micro_batch_size)")
    if cfg.split not in ("all", "deterministic", "nondeterministic"):
        raise ValueError(f"--split must be all, deterministic or nondeterministic; got {cfg.split!r}")
    if cfg.method == "drdo" and cfg.student_reward not in ("head", "logprob"):
        raise ValueError(f"--student_reward must be head or logprob; got {cfg.student_reward!r}")
    if cfg.method == "drdo" and cfg.score not in ("unlikelihood", "likelihood", "odds"):
        raise ValueError(f"--score must be unlikelihood, likelihood or odds; got {cfg.score!r}")
    if cfg.method == "edpo" and cfg.aggregate not in ("batch_min", "example_min", "mean"):
        raise ValueError(f"--aggregate must be batch_min, example_min or mean; got {cfg.aggregate!r}")
    if not 0.0 <= cfg.flip <= 1.0:
        raise ValueError(f"--flip is a share of pairs, in [0, 1]; got {cfg.flip}")
    small = cfg.model in ("embedded", "tiny")
    lr = cfg.lr or (1e-4 if small else 1e-6)
    ensemble = cfg.ensemble or (3 if cfg.method == "edpo" else 1)
    out = cfg.out or os.path.join("runs", f"{cfg.method}-{os.path.basename(cfg.model.rstrip('/'))}-"
                                          f"{os.path.basename(cfg.data)}-{cfg.split}-flip{cfg.flip:g}-s{cfg.seed}")
    return replace(cfg, lr=lr, ensemble=ensemble, out=out)


# ============================================================================================================
# 1-3) Data, Oracle scores, cached reference log-probs
# ============================================================================================================
def prepare_data(cfg, log=print):
    """-> (train_ds, test_ds, reference_dir, task): the pairs with the condition applied and, when the method
    needs them, Oracle scores; reference_dir and task are the embedded task's (None for other data)."""
    train_ds, test_ds, task = oracle.load_splits(cfg.data, seed=cfg.seed, log=log)
    reference_dir = task and task["reference"]
    if cfg.split != "all":
        cols = train_ds.column_names
        if "chosen_gold" in cols or "chosen_score" in cols:          # by the gold (or given) score margin
            det, nondet = data.split_by_margin(train_ds, columns=("chosen_gold", "rejected_gold")
                                               if "chosen_gold" in cols else None)
        elif "confidence" in cols:                                   # TL;DR: confidence x edit distance
            splits = data.tldr_splits(train_ds)
            det, nondet = splits["hc_he"], splits["lc_le"]
        else:
            raise ValueError(f"--split {cfg.split} needs scores (chosen_score/rejected_score) or annotator "
                             f"confidence in the data; {cfg.data} has neither")
        train_ds = det if cfg.split == "deterministic" else nondet
    if cfg.max_pairs:
        train_ds = train_ds.select(range(min(cfg.max_pairs, len(train_ds))))
    if cfg.flip:
        train_ds = data.flip_labels(train_ds, cfg.flip, seed=cfg.seed)
    log(f"data: {len(train_ds)} training pairs ({cfg.data}, split {cfg.split}, {cfg.flip:.0%} labels flipped), "
        f"{len(test_ds)} held-out pairs")
    if LOSSES.get(cfg.method) and LOSSES[cfg.method].needs_oracle:
        ocfg = oracle.OracleConfig(model=cfg.oracle_model or cfg.model, data=cfg.data, alpha=cfg.oracle_alpha,
                                   ensemble=cfg.ensemble, epochs=cfg.oracle_epochs, lr=cfg.oracle_lr, max_length=cfg.max_length,
                                   max_prompt_length=cfg.max_prompt_length, seed=cfg.seed)
        members, report = oracle.ensure_oracles(ocfg, train_ds, test_ds, reference_dir, log=log)
        train_ds = oracle.score_dataset(members, train_ds, cfg.max_length, cfg.max_prompt_length, log=log)
        test_ds = oracle.score_dataset(members, test_ds, cfg.max_length, cfg.max_prompt_length, log=log)
    return train_ds, test_ds, reference_dir, task


def policy_logps(model, batch, average, with_head=False):
    """Forward the stacked [chosen; rejected] batch once -> (chosen (B,), rejected (B,), head rewards or None)."""
    if with_head:
        logits, rewards = oracle.oracle_forward(model, batch["input_ids"], batch["attention_mask"])
    else:
        logits, rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, None
    logps = sequence_logps(logits, batch["input_ids"], batch["loss_mask"], average=average)     # (2B,)
    B = logps.shape[0] // 2
    return logps[:B], logps[B:], (None if rewards is None else (rewards[:B], rewards[B:]))


def autocast(cfg, device):
    enabled = cfg.bf16 or device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def reference_logps(cfg, examples, name, tokenizer, average, device, task_ref=None, log=print):
    """pi_ref's log-probs of every pair, computed once and cached under a key of the reference model, the
    tokenizer, the data, the max lengths and sum/mean. Adds ref_chosen / ref_rejected to each example."""
    ref_name = cfg.ref_model or cfg.model
    key = data._stable_hash([ref_name, _model_identity(ref_name, task_ref), len(tokenizer), tokenizer.name_or_path,
                             [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples],
                             cfg.max_length, cfg.max_prompt_length, average, cfg.bf16])
    path = os.path.join(data.cache_root(), f"reflogps-{key}.pt")
    if os.path.exists(path):
        log(f"pi_ref log-probs ({name}): cached in {path}")
        chosen, rejected = torch.load(path)
    else:
        log(f"pi_ref log-probs ({name}): computing once for {len(examples)} pairs with {ref_name}")
        ref, _ = data.load_model(ref_name, task_ref)
        ref.to(device).eval()
        chosen, rejected = [], []
        for i in range(0, len(examples), 32):
            batch = _to(data.collate(examples[i:i + 32], tokenizer.pad_token_id), device)
            with autocast(cfg, device):
                c, r, _ = policy_logps(ref, batch, average)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        torch.save((chosen, rejected), path + ".tmp")
        os.replace(path + ".tmp", path)
        del ref                                                     # freed before the policy is trained
    for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
        e["ref_chosen"], e["ref_rejected"] = c, r


def _model_identity(name, task_ref):
    """For local/embedded models, the weights' hash (so a retrained pi_ref invalidates the cache)."""
    path = task_ref if name in ("embedded", "tiny") else name
    return oracle._checkpoint_hash(path) if path and os.path.isdir(path) else name


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def collate(examples, pad_token_id):
    """data.collate plus the cached reference log-probs, as (B,) tensors."""
    batch = data.collate(examples, pad_token_id)
    if "ref_chosen" in examples[0]:
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples])
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples])
    return batch


# ============================================================================================================
# The loss of one micro-batch, for every method
# ============================================================================================================
def compute_loss(cfg, model, batch):
    """-> (losses (B,), metrics dict of detached (B,) tensors, (chosen, rejected) policy log-probs)."""
    if cfg.method == "sft":                      # NLL of the preferred response, token-averaged per sequence
        c, r, _ = policy_logps(model, batch, average=True)
        return -c, {}, (c, r)
    info = LOSSES[cfg.method]
    head = cfg.method == "drdo" and cfg.student_reward == "head"
    c, r, rewards = policy_logps(model, batch, info.average_logps, with_head=head)
    ref = (batch["ref_chosen"], batch["ref_rejected"]) if info.needs_reference else ()
    if info.needs_oracle:
        oc, orj = batch["chosen_scores"], batch["rejected_scores"]                      # (K, B)
        oc, orj = (oc, orj) if cfg.method == "edpo" else (oc.mean(0), orj.mean(0))
    kwargs = {"dpo": dict(beta=cfg.beta), "ipo": dict(beta=cfg.beta), "hinge": dict(beta=cfg.beta),
              "cdpo": dict(beta=cfg.beta, label_smoothing=cfg.label_smoothing),
              "rdpo": dict(beta=cfg.beta, label_smoothing=cfg.label_smoothing),
              "pdpo": dict(beta=cfg.beta, kl_coef=cfg.kl_coef), "distill": dict(beta=cfg.beta),
              "edpo": dict(beta=cfg.beta, kl_coef=cfg.kl_coef, aggregate=cfg.aggregate),
              "simpo": dict(beta=cfg.simpo_beta, gamma=cfg.simpo_gamma), "orpo": dict(beta=cfg.orpo_beta),
              "drdo": dict(alpha=cfg.alpha, gamma=cfg.gamma, score=cfg.score)}[cfg.method]
    if cfg.method == "drdo":
        student = rewards if head else (c, r)            # logprob: r_theta = mean log-prob (PAPER_NOTES A.5.1)
        losses, metrics = info.fn(*student, oc, orj, c, r, **kwargs)
    elif info.needs_oracle:
        losses, metrics = info.fn(c, r, *ref, oc, orj, **kwargs)
    else:
        losses, metrics = info.fn(c, r, *ref, **kwargs)
    return losses, metrics, (c, r)


# Metric names in the JSONL log: TRL's for the common ones, then ours (README "Metrics").
LOG_NAMES = {"chosen_rewards": "rewards/chosen", "rejected_rewards": "rewards/rejected",
             "margins": "rewards/margins", "accuracies": "rewards/accuracies",
             "oracle_margin": "oracle/margin", "student_margin": "student/margin",
             "distill_loss": "distill/sq_error", "focal_weight": "focal/weight", "pref_loss": "pref/loss",
             "pref_logit": "pref/logit", "forward_kl": "kl/forward", "nll_loss": "nll_loss",
             "log_odds_ratio": "log_odds_ratio"}


def _sums(metrics, losses, logps):
    """Per-pair values summed over a micro-batch (divided by the window's pair count when logged)."""
    out = {"loss": losses.detach().sum().item(), "logps/chosen": logps[0].detach().sum().item(),
           "logps/rejected": logps[1].detach().sum().item()}
    for k, v in metrics.items():
        if k in LOG_NAMES and v.dim() == 1:
            out[LOG_NAMES[k]] = v.float().sum().item()
    return out


@torch.no_grad()
def evaluate_pairs(cfg, model, examples, pad_id, device):
    """Held-out loss, reward accuracy and margins (eval/ prefix), micro-batch by micro-batch."""
    model.eval()
    totals, n = {}, 0
    for i in range(0, len(examples), cfg.micro_batch_size):
        batch = _to(collate(examples[i:i + cfg.micro_batch_size], pad_id), device)
        with autocast(cfg, device):
            losses, metrics, logps = compute_loss(cfg, model, batch)
        for k, v in _sums(metrics, losses.float(), logps).items():
            totals[k] = totals.get(k, 0.0) + v
        n += losses.shape[0]
    return {f"eval/{k}": v / n for k, v in totals.items()}


# ============================================================================================================
# Checkpoints: Hugging Face weights + tokenizer + head + optimizer/scheduler/RNG/step, written atomically
# ============================================================================================================
def save_checkpoint(cfg, model, tokenizer, opt, sched, step):
    final, tmp, old = (os.path.join(cfg.out, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "reward_head"):
        oracle.save_oracle(model, tokenizer, tmp)            # HF model + tokenizer + reward_head.pt
    else:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}},
               os.path.join(tmp, "trainer_state.pt"))
    with open(os.path.join(tmp, "train_config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)
    if os.path.isdir(final):                                 # swap: a crash at any point leaves one full copy
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(cfg):
    for name in ("checkpoint", "checkpoint.old"):
        path = os.path.join(cfg.out, name)
        if os.path.exists(os.path.join(path, "trainer_state.pt")):
            return path
    return None


# ============================================================================================================
# 4) The loop
# ============================================================================================================
def lr_lambda(total_steps, warmup):
    """Linear warmup over `warmup` of the steps, then cosine decay to 0 (a multiplier of --lr)."""
    n_warm = max(1, round(warmup * total_steps))

    def f(step):
        if step < n_warm:
            return (step + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, total_steps - n_warm)))
    return f


def windows(n_examples, cfg):
    """The optimizer steps of the whole run: a list of windows, each a list of micro-batches of example
    indices. Epoch e uses a permutation seeded by (seed, e), so the order is a function of the step alone and
    a resumed run sees exactly the batches an uninterrupted run would. The last window of an epoch may be short."""
    steps, e = [], 0
    total_pairs = round(cfg.epochs * n_examples)
    while sum(len(m) for w in steps for m in w) < total_pairs:
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(cfg.seed * 1000 + e)).tolist()
        order = order[:total_pairs - sum(len(m) for w in steps for m in w)]
        for i in range(0, len(order), cfg.batch_size):
            w = order[i:i + cfg.batch_size]
            steps.append([w[j:j + cfg.micro_batch_size] for j in range(0, len(w), cfg.micro_batch_size)])
        e += 1
    return steps


def train(cfg, log=print):
    """The whole run; returns a summary dict (also written to <out>/summary.json)."""
    t_start = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)

    # 1-2) data (and Oracle scores)
    train_ds, test_ds, task_ref, task = prepare_data(cfg, log)
    ckpt = latest_checkpoint(cfg) if cfg.resume else None
    if cfg.resume and ckpt is None:
        log(f"--resume: no checkpoint in {cfg.out}; starting from scratch")
    log(f"policy: {ckpt or cfg.model}")
    model, tokenizer = data.load_model(ckpt or cfg.model, task_ref)
    if cfg.method == "drdo" and cfg.student_reward == "head":
        torch.manual_seed(cfg.seed)
        oracle.add_reward_head(model)                     # zero-init: student margins start at 0
        if ckpt:
            model.reward_head.load_state_dict(torch.load(os.path.join(ckpt, oracle.HEAD_FILE)))
    model.to(device)
    train_ex, _ = data.tokenize_dataset(tokenizer, train_ds, cfg.max_length, cfg.max_prompt_length, log=log)
    test_ex, _ = data.tokenize_dataset(tokenizer, test_ds, cfg.max_length, cfg.max_prompt_length, log=log)

    # 3) pi_ref log-probs, once, cached; the reference model is never in memory with the policy's optimizer
    info = LOSSES.get(cfg.method)
    reference_built = bool(info and info.needs_reference)
    if reference_built:
        for name, ex in (("train", train_ex), ("held-out", test_ex)):
            reference_logps(cfg, ex, name, tokenizer, info.average_logps, device, task_ref, log)

    # 4) optimizer, schedule, state
    plan = windows(len(train_ex), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(len(plan), cfg.warmup))
    step = 0
    if ckpt:
        state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        log(f"resumed from {ckpt} at step {step}")
    log(f"training: {cfg.method}, {len(train_ex)} pairs, {len(plan)} steps of {cfg.batch_size} pairs "
        f"({cfg.batch_size // cfg.micro_batch_size} micro-batches of {cfg.micro_batch_size}), lr {cfg.lr:g}, "
        f"{'bf16 autocast' if cfg.bf16 or device.type == 'cuda' else 'fp32'} on {device.type}")
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    if not ckpt and os.path.exists(metrics_path):
        os.remove(metrics_path)
    _truncate_log(metrics_path, step)                         # a resumed run rewrites steps after its checkpoint
    probe = train_ex[:256]                # a fixed subset of training pairs: the objective before and after
    objective_start = (evaluate_pairs(cfg, model, probe, tokenizer.pad_token_id, device)["eval/loss"]
                       if step == 0 else None)
    bar = tqdm(total=len(plan), initial=step, desc=cfg.method, disable=None)
    last = {}
    while step < len(plan):
        window = plan[step]
        n_pairs = sum(len(m) for m in window)
        model.train()
        sums = {}
        for micro in window:
            batch = _to(collate([train_ex[i] for i in micro], tokenizer.pad_token_id), device)
            # 1) policy log-probs (+ head rewards) and 2) the loss; the reference log-probs come from the cache
            with autocast(cfg, device):
                losses, metrics, logps = compute_loss(cfg, model, batch)
            # each micro-batch contributes sum(per-pair losses) / (pairs in the window): the window's gradient
            # is then that of the mean over its pairs, whatever the micro-batch split (and a short last window
            # is averaged over its own pairs). With equal micro-batches this is "mean / micro-batches".
            loss = losses.float().sum() / n_pairs
            if not torch.isfinite(loss):
                good = latest_checkpoint(cfg)
                raise FloatingPointError(
                    f"non-finite loss ({loss.item()}) at step {step + 1} of {cfg.method}; nothing was saved for this "
                    f"step. Last good checkpoint: {good or 'none yet'} (resume with --resume). Try a lower --lr "
                    f"(now {cfg.lr:g}) or --beta, or --max_grad_norm 1.0.")
            loss.backward()
            for k, v in _sums(metrics, losses.float(), logps).items():
                sums[k] = sums.get(k, 0.0) + v
        # 3) step
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        # 4) log
        last = {"step": step, "epoch": round(step / len(plan) * cfg.epochs, 4),
                **{k: v / n_pairs for k, v in sums.items()},
                "grad_norm": grad_norm.item(), "learning_rate": sched.get_last_lr()[0]}
        if cfg.eval_every and step % cfg.eval_every == 0 or step == len(plan):
            last.update(evaluate_pairs(cfg, model, test_ex, tokenizer.pad_token_id, device))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(last) + "\n")
        bar.update()
        bar.set_postfix(loss=f"{last['loss']:.3f}",
                        **({"margin": f"{last['rewards/margins']:.2f}"} if "rewards/margins" in last else {}))
        if cfg.stop_after and step >= cfg.stop_after:
            bar.close()
            log(f"--stop_after {cfg.stop_after}: stopping as if killed (last checkpoint kept)")
            return {"stopped_at": step}
        if step % cfg.save_every == 0 or step == len(plan):
            save_checkpoint(cfg, model, tokenizer, opt, sched, step)
    bar.close()
    objective_end = evaluate_pairs(cfg, model, probe, tokenizer.pad_token_id, device)["eval/loss"]
    if objective_start is not None:
        log(f"{cfg.method} loss on {len(probe)} training pairs: {objective_start:.4f} before, {objective_end:.4f} after")
    summary = {"method": cfg.method, "steps": step, "final": last, "reference_built": reference_built,
               "objective_start": objective_start, "objective_end": objective_end,
               "train_seconds": round(time.time() - t_start, 1), "checkpoint": os.path.join(cfg.out, "checkpoint")}

    # 5) the check a user wants to see: did the policy move towards higher gold reward than pi_ref?
    if cfg.final_check and task is not None and "reference_eval_prompts" in task:
        summary["final_check"] = final_check(model, tokenizer, task, log)
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _truncate_log(path, step):
    if os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(rows)


def final_check(model, tokenizer, task, log=print):
    """Sample the trained policy on the held-out prompts with pi_ref's cached settings and seed, and compare
    the gold rewards sample by sample (evaluate.paired_comparison)."""
    ref = task["reference_eval_prompts"]
    s = data.REFERENCE_SAMPLES
    comps = data.sample_completions(model.cpu(), tokenizer, [r["prompt"] for r in ref], s["n"], s["temperature"],
                                    task["stats"]["task"]["max_new_tokens"], seed=s["seed"],
                                    desc="sampling held-out prompts")
    res = evaluate.paired_comparison([data.gold_reward(c) for c in comps], [r["gold"] for r in ref])
    res["examples"] = [{"prompt": r["prompt"], "policy": c[0], "reference": r["completions"][0]}
                       for r, c in zip(ref[:3], comps[:3])]
    log(f"held-out check ({res['prompts']} prompts x {res['samples_per_prompt']} samples, gold = VADER "
        f"sentiment): policy {res['policy_gold']:+.3f} vs pi_ref {res['reference_gold']:+.3f}, gain "
        f"{res['gain']:+.3f} +- {res['gain_se']:.3f}; win {res['win']:.0%} / tie {res['tie']:.0%} / "
        f"loss {res['loss']:.0%} (win rate {res['win_rate']:.3f})")
    for ex in res["examples"]:
        log(f"  {ex['prompt']!r}\n     policy: {ex['policy']!r}\n     pi_ref: {ex['reference']!r}")
    return res


# ============================================================================================================
# Speed measurement
# ============================================================================================================
def benchmark(cfg, log=print):
    """cfg.benchmark optimizer steps on synthetic batches of batch_size pairs, every row max_length tokens
    (prompt max_prompt_length). Prints step time, tokens/s and peak memory (CUDA: max allocated; CPU: peak
    RSS of the process). Reference log-probs and Oracle scores are random constants: in real runs they are
    cached, so they cost nothing inside the loop, as here."""
    import resource

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task_ref = (data.embedded_task(data.EMBEDDED_PRESETS[cfg.data], log=lambda *_: None)["reference"]
                if cfg.data in data.EMBEDDED_PRESETS else None)
    try:
        model, tokenizer = data.load_model(cfg.model, task_ref)
    except ValueError as e:
        if cfg.model not in data.HUB_MODELS:
            raise
        from transformers import OPTConfig, OPTForCausalLM
        size = {"opt-125m": (768, 12, 12), "opt-350m": (1024, 24, 16), "opt-1.3b": (2048, 24, 32)}[cfg.model]
        log(f"{str(e).splitlines()[0]}\n-> timing a random-init {cfg.model} ARCHITECTURE instead (same cost)")
        ocfg = OPTConfig(hidden_size=size[0], num_hidden_layers=size[1], num_attention_heads=size[2],
                         ffn_dim=4 * size[0], word_embed_proj_dim=size[0] if size[0] != 1024 else 512,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        model, tokenizer = OPTForCausalLM(ocfg), None
    if cfg.method == "drdo" and cfg.student_reward == "head":
        oracle.add_reward_head(model)
    model.to(device).train()
    V, B, T, P = model.config.vocab_size, cfg.micro_batch_size, cfg.max_length, cfg.max_prompt_length
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, V, (2 * B, T), generator=gen),
             "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
             "loss_mask": torch.cat([torch.zeros(2 * B, P), torch.ones(2 * B, T - P)], 1).long(),
             "ref_chosen": -torch.rand(B, generator=gen) * 50, "ref_rejected": -torch.rand(B, generator=gen) * 50,
             "chosen_scores": torch.randn(cfg.ensemble, B, generator=gen),
             "rejected_scores": torch.randn(cfg.ensemble, B, generator=gen)}
    batch = _to(batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    accum = cfg.batch_size // cfg.micro_batch_size
    times = []
    for i in range(cfg.benchmark + 1):                        # step 0 is a warm-up and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(accum):
            with autocast(cfg, device):
                losses, _, _ = compute_loss(cfg, model, batch)
            (losses.float().sum() / cfg.batch_size).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    t = torch.tensor(times)
    res = {"method": cfg.method, "model": cfg.model, "params_M": round(n_params / 1e6, 2), "pairs_per_step":
           cfg.batch_size, "tokens_per_step": 2 * cfg.batch_size * T, "step_s": t.mean().item(),
           "step_s_std": t.std().item() if len(t) > 1 else 0.0,
           "tokens_per_s": 2 * cfg.batch_size * T / t.mean().item(), "peak_memory_GB": round(peak, 2),
           "memory": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
           "dtype": "bf16 autocast" if cfg.bf16 or device.type == "cuda" else "fp32", "device": device.type,
           "threads": torch.get_num_threads()}
    print(json.dumps(res))
    return res


def main(argv=None):
    cfg = data.parse_config(Config, argv, description=__doc__.split("\n\n")[0])
    try:
        cfg = resolve(cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")
    data.quiet_transformers()
    print(json.dumps(asdict(cfg), indent=1))
    try:
        if cfg.benchmark:
            return benchmark(cfg)
        return train(cfg)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
