"""pi_ref's log-probs of every pair: computed once per data set, cached on disk, and the reference model freed.

The DPO family (every loss whose registry entry consumes "reference") needs log pi_ref(y|x) for both
responses of every pair. They never change during training, so train.py computes them once, before the
policy's optimizer exists, and stores them in <cache>/reflogps-<key>.pt; later runs with the same reference
weights, tokenizer, token ids, lengths and reduction read the file. With LoRA and no --ref_model, pi_ref is
the policy itself with its adapters switched off: no second copy of the model ever sits in memory.
"""
import contextlib
import os

import torch

import tokenization
from common import cache_root, stable_hash, weights_hash
from models import autocast, is_lora, load_model, pair_logps, to_device


@torch.no_grad()
def reference_logps(cfg, examples, name, tokenizer, average, device, task_ref=None, log=print, policy=None):
    """pi_ref's log-probs of every pair, computed once and cached under a key of the reference model, the
    tokenizer, the data, the max lengths and sum/mean. Adds ref_chosen / ref_rejected to each example.
    With LoRA and no --ref_model, pi_ref is the policy itself with its adapters switched off (no second copy
    of the model); otherwise the reference is loaded, used and freed before training starts."""
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
        adapters_off = policy is not None and is_lora(policy) and not cfg.ref_model
        log(f"pi_ref log-probs ({name}): computing once for {len(examples)} pairs with {ref_name}"
            + (" (the policy with its LoRA adapters off)" if adapters_off else ""))
        ref = policy if adapters_off else load_model(ref_name, task_ref)[0].to(device)
        was_training = ref.training
        ref.eval()
        chosen, rejected = [], []
        with (ref.disable_adapter() if adapters_off else contextlib.nullcontext()):
            for i in range(0, len(examples), 32):
                batch = to_device(tokenization.collate(examples[i:i + 32], tokenizer.pad_token_id), device)
                with autocast(cfg, device):
                    c, r = pair_logps(ref, batch, average)["logps"]
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        torch.save((chosen, rejected), path + ".tmp")
        os.replace(path + ".tmp", path)
        ref.train(was_training)
        del ref                                                     # a loaded reference is freed before training
    for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
        e["ref_chosen"], e["ref_rejected"] = c, r
