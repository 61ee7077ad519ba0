"""One plain PyTorch loop for every preference-optimization method in losses.LOSSES (sft included).

    python train.py --method drdo                      # the embedded offline task, ~5 min on 2 CPU cores
    python train.py --method dpo --flip 0.2            # DPO with 20% of the training labels swapped
    python train.py --method drdo --model opt-125m     # a real model (needs the hub), bf16 on a GPU
    python train.py --help                             # every option, with its meaning and typical range
    python bench.py --method dpo --steps 5             # step time, tokens/s and peak memory (bench.py)

What happens, in order (each stage says what it is doing and caches what it builds):
 1) data     the preference pairs (data.load_splits; default: the embedded task, built once), then the
             condition: --split deterministic/nondeterministic (margin terciles), --max_pairs, --flip p
 2) Oracle   methods whose registry entry consumes Oracle rewards (distill, edpo, drdo) get them from
             oracle.py: the Oracle (an ensemble for edpo) is trained once on the SAME noisy training pairs
             and its scores cached
 3) pi_ref   methods that consume reference log-probs: computed once per pair, cached on disk, and the
             reference model freed; reference-free methods (drdo, simpo, orpo, sft) never load it
 4) loop     AdamW on fp32 master weights, warmup then cosine decay (common.cosine_schedule), gradient
             clipping, gradient accumulation, bf16 autocast on CUDA (on CPU with --bf16), held-out
             evaluation, atomic checkpoints and exact resume (checkpoint.py)
 5) check    on the embedded task: samples of the trained policy on held-out prompts against pi_ref's,
             judged by the gold reward nothing was trained on (evaluate.gold_check)

The loss of a micro-batch is built from the method's registry entry alone (losses.LOSSES: which tensors it
takes, which Config fields are its hyper-parameters): compute_loss has no per-method branch. Two generic
additions: an entry's `running` keywords (BCO's delta) get the mean of one of the loss's own metrics over the
pairs of all previous steps (the sums live in the checkpoint); --wpo multiplies the per-pair losses of entries
with wpo=True by losses.wpo_weights, detached, from the same forward (README deviations 18, 23).
For drdo with --student_reward head the policy also carries a scalar reward head (models.add_reward_head),
saved beside the checkpoint as reward_head.pt.
NOTE (deviates from paper): the DRDO paper does not state how micro-batches, schedules or clipping were set;
the values here are common DPO practice (TRL, the DPO reference code), not the paper's (README deviation 14).
"""
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

import checkpoint
import data
import evaluate
import oracle
from common import cache_root, cosine_schedule, parse_config, quiet_transformers, stable_hash, weights_hash
from losses import FDPO_DIVERGENCES, LOSSES, wpo_weights
from models import add_reward_head, load_model, pair_logps

# Values a string option may take (checked before any work starts, whatever the method).
CHOICES = {"split": ("all", "deterministic", "nondeterministic"), "score": ("unlikelihood", "likelihood", "odds"),
           "aggregate": ("batch_min", "example_min", "mean"), "student_reward": ("head", "logprob"),
           "fdpo_divergence": FDPO_DIVERGENCES}


@dataclass
class Config:
    # --- what to train ---------------------------------------------------------------------------------------
    method: str = "drdo"           # a name in losses.LOSSES (README, "The methods"); e.g. dpo ipo simpo kto drdo sft
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
    score: str = "unlikelihood"    # drdo: inner score z: unlikelihood | likelihood | odds (README deviation 5)
    student_reward: str = "head"   # drdo: head (scalar head on the policy) | logprob (mean log-prob as reward)
    exo_epsilon: float = 1e-3      # exo: label smoothing of the pair's target distribution (1e-4 - 1e-2)
    discopop_tau: float = 0.05     # discopop: temperature of the modulation sigmoid(beta h / tau) (paper 0.05; <= 1)
    fdpo_divergence: str = "reverse_kl"  # fdpo: reverse_kl (= dpo) | forward_kl | js_divergence | alpha_divergence
    fdpo_alpha: float = 0.5        # fdpo: alpha of alpha_divergence, in (0, 1) (-> 0 reverse KL, -> 1 forward KL)
    cpo_alpha: float = 1.0         # cpo: weight of the NLL of y_w, summed log-probs (paper 1; 0.1-1)
    kto_desirable_weight: float = 1.0    # kto: lambda_D, weight of the chosen (desirable) term (1-1.33)
    kto_undesirable_weight: float = 1.0  # kto: lambda_U, weight of the rejected (undesirable) term (1)
    wpo: bool = False              # WPO: weight each pair's loss by its detached on-policy weight (DPO family, simpo)
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
    stop_after: int = 0            # testing aid: stop (as if killed) after this many steps, without a final save


def resolve(cfg):
    """Fill the defaults that depend on other fields, and reject impossible combinations with one clear error."""
    if cfg.method not in LOSSES:
        raise ValueError(f"unknown --method {cfg.method!r}; choose one of: {' '.join(sorted(LOSSES))}")
    if cfg.batch_size < 1 or cfg.micro_batch_size < 1 or cfg.batch_size % cfg.micro_batch_size:
        raise ValueError(f"--batch_size {cfg.batch_size} must be a positive multiple of --micro_batch_size "
                         f"{cfg.micro_batch_size} (accumulation steps = batch_size / micro_batch_size)")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    if cfg.wpo and not LOSSES[cfg.method].wpo:
        raise ValueError(f"--wpo weights pairwise preference losses; {cfg.method} is not one. Use one of: "
                         f"{' '.join(n for n, i in LOSSES.items() if i.wpo)}")
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
    """-> (train_ds, test_ds, task): the pairs with the run's condition applied and, when the method consumes
    them, Oracle scores; task is the embedded task's dict (None for other data)."""
    train_ds, test_ds, task = data.load_splits(cfg.data, seed=cfg.seed, log=log)
    train_ds = data.apply_condition(train_ds, cfg.split, cfg.flip, cfg.max_pairs, seed=cfg.seed)
    log(f"data: {len(train_ds)} training pairs ({cfg.data}, split {cfg.split}, {cfg.flip:.0%} labels flipped), "
        f"{len(test_ds)} held-out pairs")
    if LOSSES[cfg.method].needs_oracle:
        ocfg = oracle.OracleConfig(model=cfg.oracle_model or cfg.model, data=cfg.data, alpha=cfg.oracle_alpha,
                                   ensemble=cfg.ensemble, epochs=cfg.oracle_epochs, lr=cfg.oracle_lr,
                                   max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, seed=cfg.seed)
        members, _ = oracle.ensure_oracles(ocfg, train_ds, test_ds, task and task["reference"], log=log)
        train_ds = oracle.score_dataset(members, train_ds, cfg.max_length, cfg.max_prompt_length, log=log)
        test_ds = oracle.score_dataset(members, test_ds, cfg.max_length, cfg.max_prompt_length, log=log)
    return train_ds, test_ds, task


def autocast(cfg, device):
    enabled = cfg.bf16 or device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def reference_logps(cfg, examples, name, tokenizer, average, device, task_ref=None, log=print):
    """pi_ref's log-probs of every pair, computed once and cached under a key of the reference model, the
    tokenizer, the data, the max lengths and sum/mean. Adds ref_chosen / ref_rejected to each example."""
    ref_name = cfg.ref_model or cfg.model
    ref_path = task_ref if ref_name in ("embedded", "tiny") else ref_name
    identity = weights_hash(ref_path) if ref_path and os.path.isdir(ref_path) else ref_name   # retrained -> new key
    key = stable_hash([ref_name, identity, len(tokenizer), tokenizer.name_or_path,
                       [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples],
                       cfg.max_length, cfg.max_prompt_length, average, cfg.bf16])
    path = os.path.join(cache_root(), f"reflogps-{key}.pt")
    if os.path.exists(path):
        log(f"pi_ref log-probs ({name}): cached in {path}")
        chosen, rejected = torch.load(path)
    else:
        log(f"pi_ref log-probs ({name}): computing once for {len(examples)} pairs with {ref_name}")
        ref, _ = load_model(ref_name, task_ref)
        ref.to(device).eval()
        chosen, rejected = [], []
        for i in range(0, len(examples), 32):
            batch = to_device(data.collate(examples[i:i + 32], tokenizer.pad_token_id), device)
            with autocast(cfg, device):
                c, r, _ = pair_logps(ref, batch, average)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        torch.save((chosen, rejected), path + ".tmp")
        os.replace(path + ".tmp", path)
        del ref                                                     # freed before the policy is trained
    for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
        e["ref_chosen"], e["ref_rejected"] = c, r


def to_device(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def collate(examples, pad_token_id):
    """data.collate plus the cached reference log-probs, as (B,) tensors."""
    batch = data.collate(examples, pad_token_id)
    if "ref_chosen" in examples[0]:
        batch["ref_chosen"] = torch.tensor([e["ref_chosen"] for e in examples])
        batch["ref_rejected"] = torch.tensor([e["ref_rejected"] for e in examples])
    return batch


# ============================================================================================================
# The loss of one micro-batch, for every method, from its registry entry
# ============================================================================================================
def uses_reward_head(cfg):
    """The policy carries a reward head when the loss consumes student rewards and --student_reward is head."""
    return "student" in LOSSES[cfg.method].inputs and cfg.student_reward == "head"


def compute_loss(cfg, model, batch, running=None):
    """-> (losses (B,), metrics dict of detached (B,) tensors, (chosen, rejected) policy log-probs).

    One forward of the stacked [chosen; rejected] batch; then the registry entry says which tensor pairs the
    loss takes (in order) and which Config fields fill its keywords. Only what the entry names is read.
    `running`: {keyword: value} for the entry's `running` keywords (running_means below), else their defaults."""
    info = LOSSES[cfg.method]
    head = uses_reward_head(cfg)
    c, r, head_rewards, *wpo = pair_logps(model, batch, info.average_logps, with_head=head, wpo=cfg.wpo)   # (B,)
    inputs = {
        "policy": lambda: (c, r),
        "reference": lambda: (batch["ref_chosen"], batch["ref_rejected"]),                   # (B,) cached
        "oracle": lambda: (batch["chosen_scores"].mean(0), batch["rejected_scores"].mean(0)),  # (B,)
        "oracle_members": lambda: (batch["chosen_scores"], batch["rejected_scores"]),         # (K, B)
        # DRDO's student reward r(x, y): the reward head, or the policy's own log-probs (README deviation 5)
        "student": lambda: head_rewards if head else (c, r),
    }
    args = [t for name in info.inputs for t in inputs[name]()]
    kwargs = {keyword: getattr(cfg, field) for keyword, field in info.hparams.items()}
    losses, metrics = info.fn(*args, **kwargs, **(running or {}))
    if wpo:                  # --wpo, allowed for this entry (resolve): w(y_w) w(y_l) per pair, detached
        weights = wpo_weights(*wpo[0])                                               # (B,)
        losses, metrics = losses * weights, {**metrics, "wpo_weight": weights}
    return losses, metrics, (c, r)


# Metric names in the JSONL log: TRL's for the common ones, then ours (README "Metrics").
LOG_NAMES = {"chosen_rewards": "rewards/chosen", "rejected_rewards": "rewards/rejected",
             "margins": "rewards/margins", "accuracies": "rewards/accuracies",
             "oracle_margin": "oracle/margin", "student_margin": "student/margin",
             "distill_loss": "distill/sq_error", "focal_weight": "focal/weight", "pref_loss": "pref/loss",
             "pref_logit": "pref/logit", "forward_kl": "kl/forward", "nll_loss": "nll_loss",
             "log_odds_ratio": "log_odds_ratio", "reward_shift": "bco/delta", "reward_mean": "bco/reward_mean",
             "modulation": "discopop/modulation", "z_ref": "kto/z_ref", "wpo_weight": "wpo/weight"}


def metric_sums(metrics, losses, logps):
    """Per-pair values summed over a micro-batch (divided by the window's pair count when logged)."""
    out = {"loss": losses.detach().sum().item(), "logps/chosen": logps[0].detach().sum().item(),
           "logps/rejected": logps[1].detach().sum().item()}
    for k, v in metrics.items():
        if k in LOG_NAMES and v.dim() == 1:
            out[LOG_NAMES[k]] = v.float().sum().item()
    return out


def running_means(running):
    """{keyword: mean} from the loop's {keyword: [sum, pairs]} of a `running` metric (empty before step 1)."""
    return {keyword: total / pairs for keyword, (total, pairs) in running.items() if pairs}


@torch.no_grad()
def evaluate_pairs(cfg, model, examples, pad_id, device, running=None):
    """Held-out loss, reward accuracy and margins (eval/ prefix), micro-batch by micro-batch."""
    model.eval()
    totals, n = {}, 0
    for i in range(0, len(examples), cfg.micro_batch_size):
        batch = to_device(collate(examples[i:i + cfg.micro_batch_size], pad_id), device)
        with autocast(cfg, device):
            losses, metrics, logps = compute_loss(cfg, model, batch, running)
        for k, v in metric_sums(metrics, losses.float(), logps).items():
            totals[k] = totals.get(k, 0.0) + v
        n += losses.shape[0]
    return {f"eval/{k}": v / n for k, v in totals.items()}


# ============================================================================================================
# 4) The loop
# ============================================================================================================
def windows(n_examples, cfg):
    """The optimizer steps of the whole run: a list of windows, each a list of micro-batches of example
    indices. Epoch e uses a permutation seeded by (seed, e), so the order is a function of the step alone and
    a resumed run sees exactly the batches an uninterrupted run would. The last window of an epoch may be short."""
    steps, e, done = [], 0, 0
    total_pairs = round(cfg.epochs * n_examples)
    while done < total_pairs:
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(cfg.seed * 1000 + e)).tolist()
        order = order[:total_pairs - done]
        for i in range(0, len(order), cfg.batch_size):
            w = order[i:i + cfg.batch_size]
            steps.append([w[j:j + cfg.micro_batch_size] for j in range(0, len(w), cfg.micro_batch_size)])
        done += len(order)
        e += 1
    return steps


def load_policy(cfg, ckpt, task_ref, device):
    """The policy to train: the checkpoint to resume, else --model; with DRDO's head student, its head."""
    model, tokenizer = load_model(ckpt or cfg.model, task_ref)
    if uses_reward_head(cfg):
        torch.manual_seed(cfg.seed)
        add_reward_head(model)                            # zero-init: student margins start at 0
        if ckpt:
            model.reward_head.load_state_dict(torch.load(os.path.join(ckpt, "reward_head.pt")))
    return model.to(device), tokenizer


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
    train_ds, test_ds, task = prepare_data(cfg, log)
    task_ref = task and task["reference"]
    ckpt = checkpoint.latest(cfg.out) if cfg.resume else None
    if cfg.resume and ckpt is None:
        log(f"--resume: no checkpoint in {cfg.out}; starting from scratch")
    log(f"policy: {ckpt or cfg.model}")
    model, tokenizer = load_policy(cfg, ckpt, task_ref, device)
    train_ex, _ = data.tokenize_dataset(tokenizer, train_ds, cfg.max_length, cfg.max_prompt_length, log=log)
    test_ex, _ = data.tokenize_dataset(tokenizer, test_ds, cfg.max_length, cfg.max_prompt_length, log=log)

    # 3) pi_ref log-probs, once, cached; the reference model is never in memory with the policy's optimizer
    info = LOSSES[cfg.method]
    if info.needs_reference:
        for name, ex in (("train", train_ex), ("held-out", test_ex)):
            reference_logps(cfg, ex, name, tokenizer, info.average_logps, device, task_ref, log)

    # 4) optimizer, schedule, state
    plan = windows(len(train_ex), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = cosine_schedule(opt, len(plan), cfg.warmup)
    step = 0
    running = {keyword: [0.0, 0] for keyword in info.running}   # registry `running`: [metric sum, pairs] so far
    if ckpt:
        state = checkpoint.load_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        running = state.get("running", running)
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        log(f"resumed from {ckpt} at step {step}")
    log(f"training: {cfg.method}, {len(train_ex)} pairs, {len(plan)} steps of {cfg.batch_size} pairs "
        f"({cfg.batch_size // cfg.micro_batch_size} micro-batches of {cfg.micro_batch_size}), lr {cfg.lr:g}, "
        f"{'bf16 autocast' if cfg.bf16 or device.type == 'cuda' else 'fp32'} on {device.type}")
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    if not ckpt and os.path.exists(metrics_path):
        os.remove(metrics_path)
    checkpoint.truncate_log(metrics_path, step)                # a resumed run rewrites steps after its checkpoint
    probe = train_ex[:256]                # a fixed subset of training pairs: the objective before and after
    objective_start = (evaluate_pairs(cfg, model, probe, tokenizer.pad_token_id, device)["eval/loss"]
                       if step == 0 else None)                 # (no running means yet: the loss's defaults)
    bar = tqdm(total=len(plan), initial=step, desc=cfg.method, disable=None)
    last = {}
    while step < len(plan):
        window = plan[step]
        n_pairs = sum(len(m) for m in window)
        model.train()
        sums, means, seen = {}, running_means(running), []   # means: fixed for the whole step
        for micro in window:
            batch = to_device(collate([train_ex[i] for i in micro], tokenizer.pad_token_id), device)
            # 1) policy log-probs (+ head rewards) and 2) the loss; the reference log-probs come from the cache
            with autocast(cfg, device):
                losses, metrics, logps = compute_loss(cfg, model, batch, means)
            # each micro-batch contributes sum(per-pair losses) / (pairs in the window): the window's gradient
            # is then that of the mean over its pairs, whatever the micro-batch split (and a short last window
            # is averaged over its own pairs). With equal micro-batches this is "mean / micro-batches".
            loss = losses.float().sum() / n_pairs
            if not torch.isfinite(loss):
                good = checkpoint.latest(cfg.out)
                raise FloatingPointError(
                    f"non-finite loss ({loss.item()}) at step {step + 1} of {cfg.method}; nothing was saved for this "
                    f"step. Last good checkpoint: {good or 'none yet'} (resume with --resume). Try a lower --lr "
                    f"(now {cfg.lr:g}) or --beta, or --max_grad_norm 1.0.")
            loss.backward()
            for k, v in metric_sums(metrics, losses.float(), logps).items():
                sums[k] = sums.get(k, 0.0) + v
            seen += [(kw, metrics[m].float().sum().item(), len(micro)) for kw, m in info.running.items()]
        # 3) step
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for keyword, total, pairs in seen:                     # this step's pairs enter the NEXT step's means
            running[keyword] = [running[keyword][0] + total, running[keyword][1] + pairs]
        step += 1
        # 4) log
        last = {"step": step, "epoch": round(step / len(plan) * cfg.epochs, 4),
                **{k: v / n_pairs for k, v in sums.items()},
                "grad_norm": grad_norm.item(), "learning_rate": sched.get_last_lr()[0]}
        if cfg.eval_every and step % cfg.eval_every == 0 or step == len(plan):
            last.update(evaluate_pairs(cfg, model, test_ex, tokenizer.pad_token_id, device, running_means(running)))
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
            checkpoint.save(cfg.out, model, tokenizer, config=asdict(cfg), trainer_state={
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "running": running,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}})
    bar.close()
    objective_end = evaluate_pairs(cfg, model, probe, tokenizer.pad_token_id, device,
                                   running_means(running))["eval/loss"]
    if objective_start is not None:
        log(f"{cfg.method} loss on {len(probe)} training pairs: {objective_start:.4f} before, {objective_end:.4f} after")
    summary = {"method": cfg.method, "steps": step, "final": last, "reference_built": info.needs_reference,
               "objective_start": objective_start, "objective_end": objective_end,
               "train_seconds": round(time.time() - t_start, 1), "checkpoint": os.path.join(cfg.out, "checkpoint")}

    # 5) the check a user wants to see: did the policy move towards higher gold reward than pi_ref?
    if cfg.final_check and task is not None:
        summary["final_check"] = evaluate.gold_check(model, tokenizer, task, log)
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None):
    cfg = parse_config(Config, argv, description=__doc__.split("\n\n")[0])
    try:
        cfg = resolve(cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")
    quiet_transformers()
    print(json.dumps(asdict(cfg), indent=1))
    try:
        return train(cfg)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
