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
             reference model freed (reference.py); reference-free methods (drdo, simpo, orpo, cpo, sft)
             never load it
 4) loop     AdamW on fp32 master weights (LoRA: adapters only), warmup then cosine decay
             (common.cosine_schedule), gradient clipping, gradient accumulation, bf16 autocast on CUDA (on
             CPU with --bf16), optional gradient checkpointing, held-out evaluation, atomic checkpoints,
             exact resume, SIGTERM saves (checkpoint.py), metrics.jsonl and --report_to sinks (runlog.py)
 5) check    on the embedded task: samples of the trained policy on held-out prompts against pi_ref's,
             judged by the gold reward nothing was trained on (evaluate.gold_check)

The loss of a micro-batch is built from the method's registry entry alone (objective.py: which tensors it
takes, which Config fields are its hyper-parameters): compute_loss has no per-method branch. Four generic
additions, each declared in the registry: an entry's `running` keywords (BCO's delta) get the mean of one of
the loss's own metrics over the pairs of all previous steps (the sums live in the checkpoint); its `window`
keywords (e-DPO's member) get the argmin of one of its (B, K) metrics summed over the whole optimizer batch,
from a pass without gradient before the step (window_keywords); its `terms` are isolated on evaluation steps to
log each term's gradient norm; and --wpo multiplies the per-pair losses of entries with wpo=True by
losses.wpo_weights, detached, from the same forward (README deviations 11, 18, 23).
Under torchrun the same loop runs on every process (distributed.py: each takes its micro-batches of every
step, DDP or FSDP2 sums the gradients, rank 0 writes); without torchrun there is no process group at all.
drdo's student reward is the policy's implicit reward beta_r * log pi(y|x) (student_rewards); with
--student_reward head the policy carries a scalar reward head instead (models.add_reward_head), saved beside
the checkpoint as reward_head.pt.
NOTE (deviates from paper): the DRDO paper does not state how micro-batches, schedules or clipping were set;
the values here are common DPO practice (TRL, the DPO reference code), not the paper's (README deviation 14).
"""
import json
import math
import os
import random
import sys
import time
import traceback
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

import checkpoint
import conditions
import data
import distributed
import evaluate
import models
import oracle
import tokenization
from cache import cache_root
from common import cosine_schedule, parse_config, quiet_transformers
from config import Config, resolve, resume_command
from losses import loss_entry
from models import (HEAD_FILE, SLOW, adapters_trainable, add_lora, add_reward_head, add_slow_adapter, autocast,
                    check_available, enable_gradient_checkpointing, load_head, load_lora, load_model, save_model,
                    to_device)
from objective import (collate, compute_loss, evaluate_pairs, running_means, term_grad_norms, uses_reward_head,
                       window_keywords)
from reference import (fill_reference, group_reference_logps, guidance_logps, live_reference, reference_logps,
                       sync_reference)
from runlog import metric_sums, open_sinks


# ============================================================================================================
# 1-3) Data, Oracle scores, cached reference log-probs
# ============================================================================================================
def prepare_data(cfg, log=print):
    """-> (train_ds, test_ds, task, oracle members): the pairs with the run's condition applied and, when the
    method consumes them, Oracle scores (members: the Oracle directories, else []); task is the embedded
    task's dict (None for other data)."""
    train_ds, test_ds, task = data.load_splits(cfg.data, seed=cfg.seed, log=log, config=cfg.data_config,
                                               split=cfg.data_split, triples=loss_entry(cfg.method).needs_gold,
                                               stage=cfg.curriculum_stage, groups=loss_entry(cfg.method).needs_group)
    train_ds = conditions.apply_condition(train_ds, cfg.split, cfg.flip, cfg.max_pairs, seed=cfg.seed)
    log(f"data: {len(train_ds)} training pairs ({cfg.data}, split {cfg.split}, {cfg.flip:.0%} labels flipped), "
        f"{len(test_ds)} held-out pairs")
    members = []
    if loss_entry(cfg.method).needs_oracle and cfg.oracle_dir:        # a given Oracle, frozen: nothing trained
        members = oracle.saved_members(cfg.oracle_dir)
        log(f"Oracle: {len(members)} member(s) given by --oracle_dir {cfg.oracle_dir}")
    elif loss_entry(cfg.method).needs_oracle:
        ocfg = oracle.OracleConfig(model=cfg.oracle_model or cfg.model, data=cfg.data, data_config=cfg.data_config,
                                   data_split=cfg.data_split, alpha=cfg.oracle_alpha,
                                   ensemble=cfg.ensemble, epochs=cfg.oracle_epochs, lr=cfg.oracle_lr,
                                   pairs=cfg.oracle_pairs, max_length=cfg.max_length,
                                   max_prompt_length=cfg.max_prompt_length, seed=cfg.seed)
        # the Oracle's pairs: the policy's (best-worst), or all pairs of the K samples under the same condition
        oracle_ds = train_ds if cfg.oracle_pairs == "best-worst" else conditions.apply_condition(
            oracle.training_pairs(cfg.oracle_pairs, train_ds, task), cfg.split, cfg.flip, seed=cfg.seed)
        members, _ = oracle.ensure_oracles(ocfg, oracle_ds, test_ds, task and task["reference"], log=log)
    if members:
        train_ds = oracle.score_dataset(members, train_ds, cfg.max_length, cfg.max_prompt_length, log=log)
        test_ds = oracle.score_dataset(members, test_ds, cfg.max_length, cfg.max_prompt_length, log=log)
    return train_ds, test_ds, task, members


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
    """The policy to train: --model, or the checkpoint to resume (with LoRA, --model under the checkpoint's
    adapters), prepared by prepare_policy. -> (model, tokenizer)."""
    bf16 = cfg.lora_r and (cfg.base_dtype == "bf16" or cfg.base_dtype == "auto" and device.type == "cuda")
    model, tokenizer = load_model(cfg.model if cfg.lora_r else ckpt or cfg.model, task_ref,
                                  dtype=torch.bfloat16 if bf16 else torch.float32)     # frozen LoRA base: bf16 on GPU
    return prepare_policy(model, cfg, ckpt, device), tokenizer


def prepare_policy(model, cfg, ckpt=None, device=None):
    """With --lora_r, LoRA adapters on the frozen model (new, or the checkpoint's); with
    --gradient_checkpointing, layer activations recomputed in backward; with DRDO's head student, its reward
    head (zero-initialised, or the checkpoint's). New adapters and heads are seeded by --seed."""
    torch.manual_seed(cfg.seed)
    if cfg.lora_r:
        model = (load_lora(model, ckpt) if ckpt else
                 add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules))
    if loss_entry(cfg.method).needs_slow_module:      # OFS-DPO: the second LoRA module (new, or the checkpoint's)
        add_slow_adapter(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, path=ckpt)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if uses_reward_head(cfg):
        if ckpt:
            load_head(model, os.path.join(ckpt, HEAD_FILE))
        else:
            add_reward_head(model)                        # zero-init: student margins start at 0
    return model.to(device) if device is not None else model


def accumulate(cfg, d, model, mine, n_pairs, examples, pad_id, device, keywords, step):
    """1) forward and 2) backward of this rank's micro-batches of one optimizer step: the gradients of the step
    accumulate in the parameters; -> the per-pair sums of the logged values (this rank's counted pairs).
    `mine`: [(example indices, counted)] from d.share; `n_pairs`: pairs in the whole step, over all ranks."""
    info = loss_entry(cfg.method)
    sums = {}
    for j, (micro, counted) in enumerate(mine):
        batch = to_device(collate([examples[i] for i in micro], pad_id), device)
        try:
            # the policy's log-probs (+ head rewards) and the loss; reference log-probs come from the cache.
            # torchrun DDP: gradients are all-reduced on this rank's last micro-batch only
            with d.sync(model, last=j == len(mine) - 1):
                with autocast(cfg, device):
                    losses, metrics, logps = compute_loss(cfg, model, batch, keywords)
                # each micro-batch adds sum(per-pair losses) / P, P = pairs in the whole window: the window's
                # gradient is that of the mean over its pairs, whatever the split (a short last window is
                # averaged over its own pairs). torchrun, N ranks: rank r adds g_r = sum_{i in r} grad l_i * N/P
                # and DDP (FSDP too) AVERAGES over ranks: (1/N) sum_r g_r = sum_i grad l_i / P, the gradient of
                # one process. A padding micro-batch (nothing left for this rank) counts 0, joins the all-reduce.
                loss = losses.float().sum() * d.world / n_pairs if counted else losses.float().sum() * 0.0
                loss.backward()
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not checkpoint.is_out_of_memory(e):
                raise
            raise MemoryError(checkpoint.out_of_memory_message(cfg, batch, step)) from None
        for k, v in metric_sums(metrics, losses.float(), logps).items():
            sums[k] = sums.get(k, 0.0) + (v if counted else 0.0)
        for keyword, metric in info.running.items():           # `running` metrics of this step's pairs
            sums[keyword, "sum"] = sums.get((keyword, "sum"), 0.0) + (metrics[metric].float().sum().item()
                                                                      if counted else 0.0)
            sums[keyword, "pairs"] = sums.get((keyword, "pairs"), 0) + (len(micro) if counted else 0)
    return sums


def train(cfg, log=print):
    """The whole run; returns a summary dict (also written to <out>/summary.json). Under torchrun: this process's
    part of it (distributed.setup joins the process group; only rank 0 logs and writes)."""
    d = distributed.setup(cfg.fsdp)
    models.PACKING = cfg.packing                      # every forward of the run: policy, pi_ref, Oracle (packing.py)
    try:
        return run(cfg, d, log if d.rank == 0 else lambda *_: None)
    except BaseException as e:       # a signal's SystemExit too: run's frame, kept by the traceback, holds the
        if d.world > 1:              # DDP wrapper; cleared, teardown frees it before the group goes
            traceback.clear_frames(e.__traceback__)
        raise
    finally:
        models.PACKING = "off"
        distributed.teardown(d)


def run(cfg, d, log):
    t_start = time.time()
    device = d.device
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.oracle_dir:                                  # checked before anything is written
        oracle.saved_members(cfg.oracle_dir)
    os.makedirs(cfg.out, exist_ok=True)
    d.check_shared(cfg.out, cache_root())               # torchrun: rank 0 writes what every rank reads
    if d.rank == 0:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)

    # 1-2) data (and Oracle scores); first, every model the run needs must be loadable (seconds, not minutes).
    # torchrun: rank 0 builds and caches (embedded task, Oracle, scores) while the others wait, then they read
    for name in (cfg.model, cfg.ref_model, cfg.oracle_model, cfg.guidance_model, *cfg.anchor_models.split(",")):
        check_available(name)
    with d.main_first():
        train_ds, test_ds, task, oracle_members = prepare_data(cfg, log)
    task_ref = task and task["reference"]
    ckpt = d.from_rank0(cfg.resume_from or (checkpoint.latest(cfg.out) if cfg.resume else None))   # one for all
    if cfg.resume and ckpt is None:
        raise ValueError(f"--resume: {cfg.out} holds no complete checkpoint (checkpoint-<step> with "
                         f"{checkpoint.STATE_FILE}); run without --resume to start from the beginning")
    if ckpt:
        checkpoint.verify(ckpt)
    log(f"policy: {ckpt or cfg.model}" + (f"; {d.world} processes, {'FSDP' if d.fsdp else 'DDP'}" if d.world > 1 else ""))
    model, tokenizer = load_policy(cfg, ckpt, task_ref, None if d.fsdp else device)   # FSDP: sharded onto it
    model = d.wrap(model)                     # DDP / FSDP under torchrun; the model itself in one process
    net = d.local(model)                      # for passes without gradient sync (DDP: the replica inside)
    train_ex, _ = tokenization.tokenize_dataset(tokenizer, train_ds, cfg.max_length, cfg.max_prompt_length, log=log)
    test_ex, _ = tokenization.tokenize_dataset(tokenizer, test_ds, cfg.max_length, cfg.max_prompt_length, log=log)

    # 3) pi_ref log-probs, once, cached (torchrun: shared out over the ranks and gathered); the reference model
    # is never in memory with the policy's optimizer
    info = loss_entry(cfg.method)
    live_ref = None                           # TR-DPO (--ref_sync_every): a reference that follows the policy
    if info.needs_reference and cfg.ref_sync_every:
        live_ref = live_reference(cfg, task_ref, device)
        log(f"pi_ref: kept in memory and mixed with the policy every {cfg.ref_sync_every} steps "
            f"(alpha {cfg.ref_sync_alpha:g}); its log-probs are computed for each step's pairs, not cached")
    elif info.needs_reference:
        for name, ex in (("train", train_ex), ("held-out", test_ex)):
            reference_logps(cfg, ex, name, tokenizer, info.average_logps, device, task_ref, log, policy=net, d=d)
    anchors = [a for a in cfg.anchor_models.split(",") if a]      # online.py's iterates: cached like pi_ref's
    for j, anchor in enumerate(anchors):
        for name, ex in (("train", train_ex), ("held-out", test_ex)):
            reference_logps(cfg, ex, name, tokenizer, info.average_logps, device, task_ref, log, policy=net, d=d,
                            model=anchor, prefix=f"anchor{j}")
    for needed, keys, what in (("win_rates", ("chosen_win_rate", "rejected_win_rate"), "win rates P_hat(y > pi_t)"),
                               ("scores", ("chosen_score", "rejected_score"), "annotator rewards")):
        if needed in info.inputs and any(k not in e for e in train_ex + test_ex for k in keys):
            raise ValueError(f"--method {cfg.method} reads each pair's {what} ({', '.join(keys)}), which {cfg.data} "
                             "does not carry for every pair; these come from sampling and labelling: run it with "
                             f"online.py --method {cfg.method}")
    if info.needs_group:                      # BRAIn: pi_ref's and the Oracle's numbers for every candidate, once
        with d.main_first():
            for name, ex, ds in (("train", train_ex, train_ds), ("held-out", test_ex, test_ds)):
                group_reference_logps(cfg, ex, name, tokenizer, device, task_ref, log)
                scores = oracle.score_groups(oracle_members, ds, cfg.max_length, cfg.max_prompt_length, log)
                for e in ex:
                    if e["row"] not in scores:
                        raise ValueError(f"{name} record {e['row']}: the Oracle's tokenizer dropped it; use the same "
                                         "model family for --oracle_model and --model")
                    e["group_rewards"] = scores[e["row"]]
    if info.needs_guidance:                   # TGDPO: the guidance model's token rewards, once, cached
        with d.main_first():
            for name, ex in (("train", train_ex), ("held-out", test_ex)):
                guidance_logps(cfg, ex, name, tokenizer, device, task_ref, log)

    def current_reference(examples):          # TR-DPO: the live reference's log-probs of these pairs, now
        if live_ref is not None:
            fill_reference(cfg, live_ref, examples, tokenizer.pad_token_id, device, info.average_logps)

    # 4) optimizer, schedule, state
    plan = windows(len(train_ex), cfg)
    if info.needs_slow_module:                # pi_ref's pass (adapters off) leaves only the default one trainable
        adapters_trainable(net)
    trainable = [p for p in model.parameters() if p.requires_grad]          # LoRA: adapters (+ drdo's head)
    slow = [p for n, p in model.named_parameters() if p.requires_grad and f".{SLOW}." in n]   # OFS-DPO's module B
    groups = [{"params": [p for p in trainable if all(p is not q for q in slow)]}] + (
        [{"params": slow, "lr": cfg.lr / cfg.ofs_lr_ratio}] if slow else [])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = cosine_schedule(opt, len(plan), cfg.warmup)
    step = 0
    running = {keyword: [0.0, 0] for keyword in info.running}   # registry `running`: [metric sum, pairs] so far
    if ckpt:
        state = checkpoint.load_state(ckpt)
        d.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        running = state.get("running", running)
        if live_ref is not None:
            live_ref.load_state_dict(state["reference"])             # where the synced reference had got to
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        log(f"resumed from {ckpt} at step {step}")

    def save():            # torchrun: every rank gathers (FSDP), rank 0 writes, all wait until it is on disk
        weights, optimizer = d.full_state_dict(model), d.optimizer_state(model, opt)
        path = d.rank == 0 and checkpoint.save(
            cfg.out, model, tokenizer, config=asdict(cfg), keep=cfg.save_total_limit, state_dict=weights,
            trainer_state={"optimizer": optimizer, "scheduler": sched.state_dict(), "step": step, "running": running,
                           "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                           **({"reference": live_ref.state_dict()} if live_ref is not None else {})})
        d.barrier()
        return path
    log(f"training: {cfg.method}, {len(train_ex)} pairs, {len(plan)} steps of {cfg.batch_size} pairs "
        f"({cfg.batch_size // cfg.micro_batch_size} micro-batches of {cfg.micro_batch_size}, {d.world} process(es)), "
        f"lr {cfg.lr:g}, {'bf16 autocast' if cfg.bf16 or device.type == 'cuda' else 'fp32'} on {device.type}; "
        f"{sum(p.numel() for p in trainable) / 1e6:.3g}M of {sum(p.numel() for p in model.parameters()) / 1e6:.3g}M "
        f"parameters train{' (LoRA)' if cfg.lora_r else ''}{', gradient checkpointing' if cfg.gradient_checkpointing else ''}"
        f"{f', packing {cfg.packing}' if cfg.packing != 'off' else ''}")
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    if d.rank == 0:
        if not ckpt and os.path.exists(metrics_path):
            os.remove(metrics_path)
        checkpoint.truncate_log(metrics_path, step)            # a resumed run rewrites steps after its checkpoint
    probe = train_ex[:256]                # a fixed subset of training pairs: the objective before and after
    current_reference(probe)
    objective_start = (evaluate_pairs(cfg, net, probe, tokenizer.pad_token_id, device, d=d)["eval_loss"]
                       if step == 0 else None)                 # (no running means yet: the loss's defaults)
    bar = tqdm(total=len(plan), initial=step, desc=cfg.method, disable=None if d.rank == 0 else True)
    last = {}
    with checkpoint.stop_requests() as stop, open_sinks(cfg.report_to if d.rank == 0 else "", cfg.out, asdict(cfg),
                                                         step) as report:
        while step < len(plan):
            window = plan[step]
            n_pairs = sum(len(m) for m in window)             # pairs in the whole window, over all ranks
            mine = d.share(window)                            # [(micro-batch, counted)]: this rank's part
            model.train()
            current_reference([train_ex[i] for micro, _ in mine for i in micro])
            means = running_means(running)                    # fixed for the whole step, as is the window's k*
            means |= window_keywords(cfg, net, mine, train_ex, tokenizer.pad_token_id, device, means, d)
            sums = accumulate(cfg, d, model, mine, n_pairs, train_ex, tokenizer.pad_token_id, device, means, step)
            sums = d.all_sum(sums)                            # torchrun: over every rank's pairs
            if not math.isfinite(sums["loss"]):                 # checked on the whole window, on every rank
                raise FloatingPointError(checkpoint.non_finite_message(cfg, sums["loss"] / n_pairs, step))
            # 3) step
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm or float("inf"))
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm   # FSDP: DTensor
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if live_ref is not None and (step + 1) % cfg.ref_sync_every == 0:
                sync_reference(live_ref, net, cfg.ref_sync_alpha)      # TR-DPO, after this step's update
            for keyword in info.running:                       # this step's pairs enter the NEXT step's means
                running[keyword] = [running[keyword][0] + sums.pop((keyword, "sum")),
                                    running[keyword][1] + round(sums.pop((keyword, "pairs")))]
            step += 1
            # 4) log
            last = {"step": step, "epoch": round(step / len(plan) * cfg.epochs, 4),
                    **{k: v / n_pairs for k, v in sums.items()},
                    "grad_norm": grad_norm.item(), "learning_rate": sched.get_last_lr()[0]}
            if cfg.eval_every and step % cfg.eval_every == 0 or step == len(plan):
                current_reference(test_ex)
                last.update(evaluate_pairs(cfg, net, test_ex, tokenizer.pad_token_id, device, running_means(running), d))
                if d.rank == 0 and not d.fsdp:   # each term's pull on the weights, on the step's first micro-batch
                    with autocast(cfg, device):  # (rank 0's replica; not under FSDP, README)
                        last.update(term_grad_norms(cfg, net, to_device(
                            collate([train_ex[i] for i in window[0]], tokenizer.pad_token_id), device), means))
            if d.rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
                report(last)
            bar.update()
            bar.set_postfix(loss=f"{last['loss']:.3f}",
                            **({"margin": f"{last['rewards/margins']:.2f}"} if "rewards/margins" in last else {}))
            if cfg.stop_after and step >= cfg.stop_after:
                bar.close()
                log(f"--stop_after {cfg.stop_after}: stopping as if killed (last checkpoint kept)")
                return {"stopped_at": step}
            signal = d.any_rank(stop["signal"])               # torchrun: a signal to any rank stops them all here
            if step % cfg.save_every == 0 or step == len(plan) or signal:
                path = save()
            if signal:
                bar.close()
                log(f"stopped by signal {signal} after step {step}; saved {path}. Resume with:\n"
                    f"  {resume_command(cfg, d.launcher())}")
                raise SystemExit(128 + signal)
    bar.close()
    current_reference(probe)
    objective_end = evaluate_pairs(cfg, net, probe, tokenizer.pad_token_id, device, d=d)["eval_loss"]
    if objective_start is not None:
        log(f"{cfg.method} loss on {len(probe)} training pairs: {objective_start:.4f} before, {objective_end:.4f} after")
    summary = {"method": cfg.method, "steps": step, "final": last, "reference_built": info.needs_reference,
               "train_pairs": len(train_ds), "train_examples": len(train_ex), "oracle": oracle_members,
               "objective_start": objective_start, "objective_end": objective_end,
               "train_seconds": round(time.time() - t_start, 1), "checkpoint": checkpoint.latest(cfg.out),
               "processes": d.world}
    if d.rank != 0:
        return summary

    # 5) the check a user wants to see: did the policy move towards higher gold reward than pi_ref? (FSDP: on
    # rank 0, the final checkpoint loaded whole: the embedded task's models are tiny)
    if cfg.final_check and task is not None:
        policy = load_policy(cfg, summary["checkpoint"], task_ref, device)[0] if d.fsdp else net
        summary["final_check"] = evaluate.gold_check(policy, tokenizer, task, log)
    if cfg.save_merged:                  # LoRA: W + (alpha / r) B A folded into the base weights, a plain model
        summary["merged"] = os.path.join(cfg.out, "merged")
        save_model(net.merge_and_unload(), tokenizer, summary["merged"])
        log(f"merged model (loads with AutoModelForCausalLM): {summary['merged']}")
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
    except (ValueError, FileNotFoundError, ModuleNotFoundError, MemoryError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
