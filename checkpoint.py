"""A training run's state on disk: checkpoints written atomically, kept K at a time, verified, and resumed exactly.

A checkpoint is one directory, `<out>/checkpoint-<step>`:
    model.safetensors, config.json, tokenizer files   the policy (loads with AutoModelForCausalLM); with LoRA,
                                                       adapter_model.safetensors + adapter_config.json instead
                                                       (loads with peft's AutoPeftModelForCausalLM)
    reward_head.pt                                     DRDO's head student, when the policy carries one
    train_config.json                                  the run's resolved config
    trainer_state.pt                                   optimizer, scheduler, RNG, step, running means
    MANIFEST.json                                      every file's size in bytes (written last; cache.py)
It is written under `checkpoint-<step>.tmp` and renamed when complete: a crash or a kill while writing leaves
only a `.tmp` directory, which `latest` never picks (and the next save deletes). After a save, all but the
newest `keep` checkpoints are deleted (`--save_total_limit`). Under torchrun rank 0 alone writes (an FSDP model's
weights and optimizer state gathered to it first), in the same format, so a checkpoint resumes with any number
of processes. Also here: SIGTERM/SIGINT as a stop request, and the messages of failures that stop a run
(a non-finite loss, out of memory), each naming the last checkpoint.
"""
import json
import os
import re
import shutil

import torch

import cache
from common import atomic_write, write_json
from models import HEAD_FILE, save_model

STATE_FILE = "trainer_state.pt"
NAME = re.compile(r"^checkpoint-(\d+)$")


def save(out, model, tokenizer, trainer_state, config, keep=2, state_dict=None):
    """Write <out>/checkpoint-<step> atomically, then keep only the newest `keep` checkpoints -> its path.
    `state_dict`: the weights of a sharded (--fsdp) model, gathered on rank 0 (models.save_model). Under
    torchrun only rank 0 calls this (train.py)."""
    final = os.path.join(out, f"checkpoint-{trainer_state['step']}")
    tmp = final + ".tmp"
    for stale in [os.path.join(out, d) for d in os.listdir(out) if d.endswith(".tmp") and d.startswith("checkpoint-")]:
        shutil.rmtree(stale, ignore_errors=True)                   # left by a run killed while saving
    save_model(model, tokenizer, tmp, state_dict)                  # HF weights + tokenizer (+ reward_head.pt)
    write_json(config, os.path.join(tmp, "train_config.json"))
    torch.save(trainer_state, os.path.join(tmp, STATE_FILE))       # a complete directory has it
    cache.write_manifest(tmp, final, hashes=False)                  # last: every file's size (and JSONL rows)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in complete(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(out):
    """Complete checkpoint directories of a run, oldest first (by step)."""
    if not os.path.isdir(out):
        return []
    found = [(int(m.group(1)), os.path.join(out, d)) for d in os.listdir(out) if (m := NAME.match(d))]
    return [path for _, path in sorted(found) if os.path.exists(os.path.join(path, STATE_FILE))]


def latest(out):
    """The newest complete checkpoint of a run directory, or None."""
    found = complete(out)
    return found[-1] if found else None


def verify(path):
    """Open every file a resume reads, so that a damaged checkpoint fails here with the file's name instead of
    deep inside a library; raise ValueError naming the file and, when one exists, an older checkpoint."""
    from safetensors import safe_open

    def fail(name, error):
        found = complete(os.path.dirname(os.path.abspath(path)))
        here = os.path.abspath(path)
        older = found[:found.index(here)] if here in found else found
        hint = (f"An older checkpoint exists: {older[-1]}; resume from it with --resume_from {older[-1]}"
                if older else "No older checkpoint exists in this run directory; start again without --resume")
        raise ValueError(f"checkpoint {path} cannot be loaded: {os.path.join(path, name)}: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}. {hint}.")

    present = os.listdir(path)
    if cache.MANIFEST in present:       # every file at the size it was written (checkpoints of older versions
        found = cache.damage(path)      # have no manifest: the format checks below still run)
        if found is not None:
            fail(os.path.relpath(found[0], path), found[1])
    required = {"train_config.json", "adapter_config.json" if "adapter_config.json" in present else "config.json"}
    for name in sorted(required | {n for n in present if n.endswith(".json")}):   # incl. tokenizer files
        try:
            with open(os.path.join(path, name)) as f:
                json.load(f)
        except Exception as e:                                     # missing, truncated, not JSON
            fail(name, e)
    weights = [n for n in present if n.endswith(".safetensors")]
    if not weights:
        fail("model.safetensors", "no weights file")
    for name in weights:
        try:
            with safe_open(os.path.join(path, name), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except Exception as e:
            fail(name, e)
    for name in (STATE_FILE, HEAD_FILE):
        if name == HEAD_FILE and not os.path.exists(os.path.join(path, name)):
            continue
        try:
            torch.load(os.path.join(path, name), weights_only=False)
        except Exception as e:
            fail(name, e)
    return path


def load_state(path):
    """The trainer state of a checkpoint (optimizer, scheduler, RNG, step, the sums behind running means)."""
    return torch.load(os.path.join(path, STATE_FILE), weights_only=False)


def truncate_log(path, step):
    """Keep the JSONL rows of steps <= step: a resumed run rewrites the steps after its checkpoint.
    A last line cut short (the process died while appending it) is dropped with the other rows after the
    checkpoint; a damaged line before the last, or a log that stops before the checkpoint's step, cannot come
    from a crash and raises a ValueError naming the file."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n < len(lines):
                raise ValueError(f"{path}, line {n} of {len(lines)}: not JSON; the run's log is damaged. Move "
                                 "it away to resume without the earlier rows, or start the run again") from None
    kept = [line for line, row in zip(lines, rows) if row["step"] <= step]
    if step and (not kept or json.loads(kept[-1])["step"] != step):
        raise ValueError(f"{path}: its last row is step {json.loads(kept[-1])['step'] if kept else 'none'}, the "
                         f"checkpoint's is {step}; the log lost rows. Move it away to resume without them, or "
                         "start the run again")

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)
    atomic_write(path, write)


# ============================================================================================================
# Preemption: SIGTERM / SIGINT end the run at the next step boundary, with a checkpoint
# ============================================================================================================
class stop_requests:
    """`with stop_requests() as stop:` -> SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) set
    stop["signal"] instead of killing the process, so the loop can finish its step, save and exit. The
    previous handlers come back on exit. (A no-op outside the main thread, where signals cannot be caught.)"""

    def __enter__(self):
        import signal
        import threading
        self.flag, self.previous = {"signal": None}, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, lambda signum, frame: self.flag.update(signal=signum))
        return self.flag

    def __exit__(self, *exc):
        import signal
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


# ============================================================================================================
# Failures that stop a run: nothing is saved for the failing step; the message names the last checkpoint
# ============================================================================================================
def non_finite_message(cfg, loss, step):
    return (f"non-finite loss ({loss}) at step {step + 1} of {cfg.method}; nothing was saved for this step. Last "
            f"good checkpoint: {latest(cfg.out) or 'none yet'} (resume with --resume). Try a lower --lr (now "
            f"{cfg.lr:g}) or --beta, or --max_grad_norm 1.0.")


def is_out_of_memory(error):
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a RuntimeError whose message says so)."""
    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in text or \
        "not enough memory" in text or "out of memory" in text


def out_of_memory_message(cfg, batch, step):
    rows, T = batch["input_ids"].shape
    return (f"out of memory at step {step + 1} on a micro-batch of {rows // 2} pairs x {T} tokens. Use less memory "
            f"per forward pass: a smaller --micro_batch_size (now {cfg.micro_batch_size}; keep --batch_size "
            f"{cfg.batch_size}, gradient accumulation makes up the rest), a smaller --max_length (now "
            f"{cfg.max_length}) or --max_prompt_length"
            + ("" if cfg.gradient_checkpointing else ", --gradient_checkpointing (activations)")
            + ("" if cfg.lora_r else ", --lora_r 16 (no gradients or optimizer state for the base weights)")
            + f". Nothing was saved for this step; last checkpoint: {latest(cfg.out) or 'none yet'} "
              "(continue from it with --resume).")
