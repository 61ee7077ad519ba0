"""pi_ref's log-probs of every pair: computed once per data set, cached on disk, and the reference model freed.

The DPO family (every loss whose registry entry consumes "reference") needs log pi_ref(y|x) for both
responses of every pair. They never change during training, so train.py computes them once, before the
policy's optimizer exists, and stores them in <cache>/reflogps-<key>/logps.pt (a cache entry: cache.py); later
runs with the same reference weights, token ids, lengths, reduction and packing mode read the file. With LoRA and
no --ref_model, pi_ref is the policy itself with its adapters switched off: no second copy of the model ever
sits in memory. Under torchrun the pairs are shared out over the processes and the results gathered (each pair
computed once).

The exception is TR-DPO's reference syncing (--ref_sync_every): the reference then moves towards the policy
during training, so it is kept in memory (live_reference), its log-probs are computed for each step's pairs
just before the step (fill_reference), and every N steps it is mixed with the policy (sync_reference).
"""
import contextlib
import os

import torch

import cache
import tokenization
from common import stable_hash, weights_hash
from losses import token_logps
from models import autocast, batch_logps, is_lora, load_model, packing_key, pair_logps, to_device


def model_identity(name):
    """What a cache key records for a model: the hash of its weights when it is a local directory (retrained ->
    new key), else its name."""
    return weights_hash(name) if name and os.path.isdir(name) else name


def reference_identity(cfg, task_ref):
    """(the reference's name, its model_identity): --ref_model, else --model; the embedded task's pi_ref by path."""
    ref_name = cfg.ref_model or cfg.model
    return ref_name, model_identity(task_ref if ref_name in ("embedded", "tiny") else ref_name)


@torch.no_grad()
def reference_logps(cfg, examples, name, tokenizer, average, device, task_ref=None, log=print, policy=None, d=None,
                    model=None, prefix="ref"):
    """pi_ref's log-probs of every pair, computed once and cached under a key of the reference model, the
    tokenizer, the data, the max lengths and sum/mean. Adds ref_chosen / ref_rejected to each example, and with
    sums also ref_chosen_tail / ref_rejected_tail, the log-probs past the pair's shared length (LD-DPO at any
    alpha reads the same cache).
    With LoRA and no --ref_model, pi_ref is the policy itself with its adapters switched off (no second copy
    of the model); otherwise the reference is loaded, used and freed before training starts.
    Under torchrun (`d`, a distributed.Dist): rank 0 says whether the cache exists; if not, each rank computes
    the batches of 32 pairs it is given (d.share) and all ranks gather every batch's result, so each pair is
    computed once in the whole run (by one rank) and rank 0 writes the cache. A batch's numbers do not depend
    on which rank computes it, so they equal the single-process ones. `policy` is then distributed's
    d.local(model): DDP's replica, or the FSDP-sharded model (every rank takes part in each forward).
    `model`, `prefix`: the same for another frozen model (an --anchor_models entry: online.py's pi_t or an older
    iterate), written as <prefix>_chosen / <prefix>_rejected (anchor<j>_...), keyed on ITS weights: each round's
    new iterate is a new key, so a cache entry is never read for a model it was not computed with."""
    ref_name, identity = reference_identity(cfg, task_ref) if model is None else (
        model, model_identity(task_ref if model in ("embedded", "tiny") else model))
    # the token ids are in the key, so the tokenizer enters only by its length: not by its path, which differs
    # when a resumed run loads it from its checkpoint (the same pi_ref log-probs must be read back, not recomputed)
    key = stable_hash([ref_name, identity, len(tokenizer),
                       [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples],
                       cfg.max_length, cfg.max_prompt_length, average, cfg.bf16, "with-tails", *packing_key()])
    entry = os.path.join(cache.cache_root(), f"reflogps-{key}")
    path = os.path.join(entry, "logps.pt")
    who = "pi_ref" if model is None else f"{prefix} ({model})"
    cached = cache.ready(entry, log) if d is None else d.from_rank0(d.rank == 0 and cache.ready(entry, log))
    if cached:
        log(f"{who} log-probs ({name}): cached in {path}")
        stored = torch.load(path)
    else:
        adapters_off = model is None and policy is not None and is_lora(policy) and not cfg.ref_model
        log(f"{who} log-probs ({name}): computing once for {len(examples)} pairs with {ref_name}"
            + (" (the policy with its LoRA adapters off)" if adapters_off else "")
            + (f", shared over {d.world} processes" if d is not None and d.world > 1 else ""))
        if adapters_off:
            ref = policy
        else:
            ref = load_model(ref_name, task_ref)[0]
            ref = d.shard(ref) if d is not None and d.fsdp else ref.to(device)   # FSDP: pi_ref sharded too
        was_training = ref.training
        ref.eval()
        starts = list(range(0, len(examples), 32))
        mine = [(i, True) for i in starts] if d is None else d.share(starts, pad=d.fsdp)
        done = {}                                   # batch start -> [chosen, rejected(, chosen tail, rejected tail)]
        with (ref.disable_adapter() if adapters_off else contextlib.nullcontext()):
            for i, counted in mine:
                batch = to_device(tokenization.collate(examples[i:i + 32], tokenizer.pad_token_id), device)
                with autocast(cfg, device):
                    out = pair_logps(ref, batch, average, tail=not average)
                if counted:            # S (or Sbar), and with sums the tails past each pair's shared length
                    done[i] = [t.float().cpu() for t in out["logps"] + out.get("tail", ())]
        if d is not None:                                           # every rank's batches, on every rank
            done = {i: v for part in d.gather(done) for i, v in part.items()}
        stored = tuple(torch.cat([done[i][k] for i in starts]) for k in range(len(done[starts[0]])))
        if d is None or d.rank == 0:     # a process that raced this one may have stored it first: same numbers
            cache.build(entry, lambda tmp: torch.save(stored, os.path.join(tmp, "logps.pt")), log, inputs=key)
        ref.train(was_training)
        del ref                                                     # a loaded reference is freed before training
    names = tuple(f"{prefix}_{k}" for k in ("chosen", "rejected", "chosen_tail", "rejected_tail"))[:len(stored)]
    columns = [values.tolist() for values in stored]
    for i, e in enumerate(examples):
        e.update({name: column[i] for name, column in zip(names, columns)})


# ============================================================================================================
# TR-DPO: a reference that follows the policy (Gorbatovski et al., arXiv 2404.09656, "Learn your reference
# model for real good alignment")
#
# Every N steps (--ref_sync_every), the reference's weights are mixed with the policy's:
#     theta_ref <- alpha * theta + (1 - alpha) * theta_ref        (soft update; alpha = 1 is the hard update)
# so the KL anchor moves with training instead of pinning the policy to the SFT model. The loss is unchanged
# (any entry that reads "reference"); only where pi_ref's log-probs come from changes: a second model in memory,
# one forward without gradient over each step's pairs, as TRL's sync_ref_model does.
# NOTE (deviates from paper): the update is applied every N steps with mixing weight alpha, as TRL 1.16
#   implements it (ref_model_sync_steps, ref_model_mixup_alpha; defaults 512 and 0.6 there, ours 0 = off and
#   0.6). The paper names a soft update with weight alpha and a hard update every tau steps; as we read it,
#   --ref_sync_every 1 with alpha < 1 is the first and --ref_sync_every tau with alpha = 1 the second.
# ============================================================================================================
def live_reference(cfg, task_ref, device):
    """The reference model of a run with --ref_sync_every, frozen (it changes only through sync_reference)."""
    ref = load_model(cfg.ref_model or cfg.model, task_ref)[0].to(device).eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def fill_reference(cfg, ref, examples, pad_id, device, average):
    """The live reference's log-probs of `examples` (and, with sums, their tails past the shared length), written
    into each example as the cache does: ref_chosen, ref_rejected (, ref_chosen_tail, ref_rejected_tail)."""
    names = ("ref_chosen", "ref_rejected", "ref_chosen_tail", "ref_rejected_tail")
    for i in range(0, len(examples), 32):
        part = examples[i:i + 32]
        batch = to_device(tokenization.collate(part, pad_id), device)
        with autocast(cfg, device):
            out = pair_logps(ref, batch, average, tail=not average)
        columns = [t.float().cpu().tolist() for t in out["logps"] + out.get("tail", ())]
        for j, e in enumerate(part):
            e.update({name: column[j] for name, column in zip(names, columns)})


@torch.no_grad()
def sync_reference(ref, policy, alpha):
    """theta_ref <- alpha * theta + (1 - alpha) * theta_ref, parameter by parameter (buffers copied)."""
    target = dict(policy.named_parameters())
    for name, p in ref.named_parameters():
        p.mul_(1.0 - alpha).add_(target[name].detach().to(p.dtype), alpha=alpha)
    buffers = dict(policy.named_buffers())
    for name, b in ref.named_buffers():
        if name in buffers:
            b.copy_(buffers[name])


# ============================================================================================================
# TGDPO: the guidance model's token rewards, computed once (like pi_ref's log-probs) and cached
# ============================================================================================================
def guidance_path(name):
    """--guidance_model: a train.py run directory (its latest checkpoint), a checkpoint, a path or a hub id."""
    import checkpoint
    return (checkpoint.latest(name) or name) if os.path.isdir(name) else name


@torch.no_grad()
def _response_token_logps(model, batch):
    """log pi(y_t) of every response token of each row of a collated batch -> list of (|y|,) fp32 tensors."""
    ids, mask = batch["input_ids"], batch["loss_mask"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits           # (N, T, V)
    values = token_logps(logits[:, :-1].float(), ids[:, 1:])                                 # (N, T-1)
    return [row[m.bool()].cpu() for row, m in zip(values, mask[:, 1:])]


@torch.no_grad()
def guidance_logps(cfg, examples, name, tokenizer, device, task_ref=None, log=print):
    """g_t = log pi_r(y_t) - log pi_ref(y_t) for every response token of every pair (pi_r = --guidance_model), and
    G_ref(y) = sum_t g_t log pi_ref(y_t); cached under a key of both models' weights and the token ids. Adds
    guidance_chosen / guidance_rejected (lists, one value per response token) and ref_guided_chosen /
    ref_guided_rejected to each example (losses.tgdpo_loss, step 3)."""
    guide = guidance_path(cfg.guidance_model)
    ref_name, identity = reference_identity(cfg, task_ref)
    key = stable_hash([identity, model_identity(guide), len(tokenizer),
                       [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples], cfg.bf16,
                       *packing_key()])

    def compute():
        log(f"guidance ({name}): token log-ratios of {guide} to {ref_name} for {len(examples)} pairs, once")
        models = [load_model(n, task_ref)[0].to(device).eval() for n in (ref_name, guide)]
        rows = []                                            # per pair: (g chosen, g rejected, G_ref chosen, rejected)
        for i in range(0, len(examples), 32):
            part = examples[i:i + 32]
            batch = to_device(tokenization.collate(part, tokenizer.pad_token_id), device)
            with autocast(cfg, device):
                ref_lp, guide_lp = (_response_token_logps(m, batch) for m in models)
            B = len(part)
            for j in range(B):
                g = [guide_lp[r] - ref_lp[r] for r in (j, B + j)]
                rows.append((g[0].tolist(), g[1].tolist(), float((g[0] * ref_lp[j]).sum()),
                             float((g[1] * ref_lp[B + j]).sum())))
        return rows
    rows = cache.load_or_build(os.path.join(cache.cache_root(), f"guidance-{key}"), "guidance.pt", compute, log,
                               inputs=key, what=f"guidance ({name})")
    for e, (gc, gr, rc, rr) in zip(examples, rows):
        e.update(guidance_chosen=gc, guidance_rejected=gr, ref_guided_chosen=rc, ref_guided_rejected=rr)


# ============================================================================================================
# BRAIn: pi_ref's log-probs of every prompt's K candidates, computed once and cached
# ============================================================================================================
@torch.no_grad()
def group_reference_logps(cfg, examples, name, tokenizer, device, task_ref=None, log=print):
    """pi_ref's summed log-probs of each example's K responses (`responses_ids`) -> e["group_ref"], a list of K
    floats; cached under a key of pi_ref's weights and the token ids."""
    ref_name, identity = reference_identity(cfg, task_ref)
    key = stable_hash([identity, len(tokenizer), [(e["prompt_ids"], e["responses_ids"]) for e in examples],
                       cfg.bf16, *packing_key()])

    def compute():
        log(f"pi_ref log-probs of the groups ({name}): computing once for {len(examples)} prompts with {ref_name}")
        ref = load_model(ref_name, task_ref)[0].to(device).eval()
        rows = []
        for i in range(0, len(examples), 16):
            part = examples[i:i + 16]
            batch = to_device(tokenization.collate(part, tokenizer.pad_token_id), device)
            group = {k[len("group_"):]: v for k, v in batch.items() if k.startswith("group_")}
            with autocast(cfg, device):
                S = batch_logps(ref, group)["logps"].float().cpu().view(-1, len(part)).T   # (B, K)
            rows.extend(S.tolist())
        return rows
    rows = cache.load_or_build(os.path.join(cache.cache_root(), f"groupref-{key}"), "logps.pt", compute, log,
                               inputs=key, what=f"pi_ref log-probs of the groups ({name})")
    for e, row in zip(examples, rows):
        e["group_ref"] = row
