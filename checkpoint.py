"""A training run's state on disk: checkpoints written atomically, found again, and resumed exactly.

A checkpoint is one directory, `<out>/checkpoint`:
    model.safetensors, config.json, tokenizer files   the policy (loads with AutoModelForCausalLM)
    reward_head.pt                                     DRDO's head student, when the policy carries one
    trainer_state.pt                                   optimizer, scheduler, RNG states, step, running means
    train_config.json                                  the run's resolved config
It is built in `checkpoint.tmp`, then swapped in: the old one is renamed `checkpoint.old`, the new one
renamed into place, and `checkpoint.old` deleted. A crash at any moment leaves at least one complete
checkpoint, which `latest` finds (trainer_state.pt is written last, so its presence marks a complete one).
"""
import json
import os
import shutil

import torch

from common import write_json
from models import save_model

STATE_FILE = "trainer_state.pt"


def save(out, model, tokenizer, trainer_state, config):
    """Write <out>/checkpoint atomically (see the module docstring). trainer_state: a dict torch.save can write."""
    final, tmp, old = (os.path.join(out, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)                        # HF weights + tokenizer (+ reward_head.pt)
    write_json(config, os.path.join(tmp, "train_config.json"))
    torch.save(trainer_state, os.path.join(tmp, STATE_FILE))  # last: marks the directory complete
    if os.path.isdir(final):                                 # swap: a crash at any point leaves one full copy
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def latest(out):
    """The complete checkpoint to resume from (`checkpoint`, else `checkpoint.old` after a crash between the
    two renames of a swap), or None."""
    for name in ("checkpoint", "checkpoint.old"):
        path = os.path.join(out, name)
        if os.path.exists(os.path.join(path, STATE_FILE)):
            return path
    return None


def load_state(path):
    """The trainer state of a checkpoint (optimizer, scheduler, RNG, step, the sums behind running means)."""
    return torch.load(os.path.join(path, STATE_FILE), weights_only=False)


def truncate_log(path, step):
    """Keep the JSONL rows of steps <= step: a resumed run rewrites the steps after its checkpoint."""
    if os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(path, "w") as f:
            f.writelines(rows)
