"""Shared plumbing, and nothing else: the command line generated from a @dataclass, content hashes, atomic
writes (the cache built on them is cache.py), JSONL files, and the one learning-rate schedule every loop uses.

Every other module may import this one; it imports no module of this repository. Nothing here knows about
preferences, models or losses.
"""
import hashlib
import json
import os
import re


# ============================================================================================================
# A command line from a @dataclass
# ============================================================================================================
def parse_config(cls, argv=None, description=None):
    """argparse from a @dataclass: one --flag per field, its type and default from the field, its help from
    the comment on the field's line (so each option is documented in exactly one place). Booleans become
    --flag / --no-flag. Fields inherited from a parent dataclass keep the parent's comments. A class attribute
    HELP_EXTRA = {field: text} adds text computed at import time (train.py's list of every method)."""
    import argparse
    import dataclasses
    import inspect

    comments = {}
    for klass in reversed(cls.__mro__):                  # parents first, so a child's comment wins
        if dataclasses.is_dataclass(klass):
            comments.update(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(klass), flags=re.M))
    comments = {k: " ".join(filter(None, (v, getattr(cls, "HELP_EXTRA", {}).get(k)))) for k, v in comments.items()}
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default,
                                help=comments.get(f.name, ""))
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=comments.get(f.name, ""))
    return cls(**vars(parser.parse_args(argv)))


def quiet_transformers():
    """Command-line runs: no per-file loading bars or load reports from transformers (our own logs suffice)."""
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ============================================================================================================
# Content hashes (cache keys)
# ============================================================================================================
def stable_hash(obj):
    """12 hex digits of sha256 over a JSON rendering of obj (dict keys sorted): the same inputs, the same key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def weights_hash(path):
    """12 hex digits of sha256 over the weight files of a checkpoint directory (.safetensors, .bin, .pt), so
    a cache keyed by it is invalidated when the weights change, whatever the directory is called."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name.endswith((".safetensors", ".bin", ".pt")):
            with open(os.path.join(path, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    return h.hexdigest()[:12]


# ============================================================================================================
# Atomic writes and JSONL files (the cache's entries: cache.py)
# ============================================================================================================
def atomic_write(path, write):
    """write(tmp_path) then rename to `path` (one filesystem, so the rename is atomic): readers see the old
    file or the whole new one, never a half-written one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)
    return path


def write_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    return atomic_write(path, write)


def write_jsonl(rows, path):
    def write(tmp):
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return atomic_write(path, write)


def read_jsonl(path):
    """The rows of a JSONL file; a line that is not JSON (a file cut short mid-line) raises a ValueError that
    names the file and the line."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}, line {n}: not JSON ({e}); the file is damaged or cut short") from None
    return rows


# ============================================================================================================
# The learning-rate schedule (every loop: pi_ref's SFT, the Oracle, the policy)
# ============================================================================================================
def cosine_schedule(optimizer, total_steps, warmup):
    """Linear warmup over the first `warmup` share of `total_steps`, then cosine decay to exactly 0 at the
    last step: transformers.get_cosine_schedule_with_warmup, the schedule of TRL and the HF Trainer.
    Its convention: the multiplier is step / warm_steps during warmup, so the very first step runs at lr 0
    when warmup > 0 (it still fills AdamW's moment estimates); with warmup = 0 it starts at the full lr.
    """
    from transformers import get_cosine_schedule_with_warmup
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=round(warmup * total_steps),
                                           num_training_steps=total_steps)


# ============================================================================================================
# Range checks for numeric options (before any work starts)
# ============================================================================================================
INF = float("inf")


def check_ranges(cfg, limits):
    """Raise ValueError naming the flag, its value and its valid range for the first numeric option outside it.
    limits: field -> (low, high) with "[" / "(" meaning inclusive / exclusive, written as a string such as
    "[0, 1]", "(0, inf)", "[1, inf)"; every numeric field of cfg must have an entry (so none is forgotten)."""
    import dataclasses
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if f.name not in limits:
            raise KeyError(f"{type(cfg).__name__}.{f.name} has no range in its LIMITS table")
        spec = limits[f.name]
        lo, hi = (float(x) for x in spec[1:-1].split(","))
        ok = (value >= lo if spec[0] == "[" else value > lo) and (value <= hi if spec[-1] == "]" else value < hi)
        if not ok or value != value:                                   # NaN fails every comparison
            raise ValueError(f"--{f.name} must be in {spec}; got {value}")


# ============================================================================================================
# Is the Hugging Face hub reachable? (answered once, in at most a few seconds)
# ============================================================================================================
_HUB = {}


def hub_reachable(timeout=3.0):
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be reached within `timeout` seconds.

    Without network, transformers and datasets retry for about a minute before they give up; checking once
    here lets a user without internet get the clear offline message (and the local cache, when the files are
    there) at once. Behind an HTTP(S) proxy the direct probe says nothing, so the libraries are left to try.
    """
    import socket
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    if "ok" not in _HUB:
        try:
            socket.create_connection((os.environ.get("HF_ENDPOINT_HOST", "huggingface.co"), 443), timeout).close()
            _HUB["ok"] = True
        except OSError:
            _HUB["ok"] = False
    return _HUB["ok"]


def go_offline():
    """Switch transformers, huggingface_hub and datasets to their offline mode for this process (local cache
    only): what HF_HUB_OFFLINE=1 does, decided at run time."""
    import huggingface_hub.constants
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config
        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
