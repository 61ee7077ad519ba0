"""A training run's options (config.py): every bad argument is one clear error before any work, and every
numeric option has a range.
"""
import os

import pytest

import train
from train_test_helpers import run


@pytest.mark.parametrize("args, message", [
    (["--method", "dpox"], "unknown --method 'dpox'"),
    (["--method", "dpo", "--batch_size", "6", "--micro_batch_size", "4"], "must be a positive multiple"),
    (["--method", "dpo", "--batch_size", "0"], r"--batch_size must be in \[1, inf\); got 0"),
    (["--method", "dpo", "--beta", "-0.1"], r"--beta must be in \(0, inf\); got -0.1"),
    (["--method", "dpo", "--lr", "nan"], r"--lr must be in \[0, inf\); got nan"),
    (["--method", "dpo", "--warmup", "1.5"], r"--warmup must be in \[0, 1\]; got 1.5"),
    (["--method", "cdpo", "--label_smoothing", "0.5"], r"--label_smoothing must be in \[0, 0.5\)"),
    (["--method", "dpo", "--epochs", "0"], r"--epochs must be in \(0, inf\)"),
    (["--method", "dpo", "--save_total_limit", "0"], r"--save_total_limit must be in \[1, inf\)"),
    (["--method", "dpo", "--max_length", "64", "--max_prompt_length", "63"], "leaves no room for a response"),
    (["--method", "dpo", "--model", "opt-125m"], "Without internet, use one of"),
    (["--method", "dpo", "--model", "no-such-org/no-such-model"], "Without internet, use one of"),
    (["--method", "dpo", "--split", "hard"], "--split must be one of all, deterministic, nondeterministic"),
    (["--method", "drdo", "--score", "margin"], "--score must be one of"),
    (["--method", "edpo", "--aggregate", "max"], "--aggregate must be one of"),
    (["--method", "drdo", "--student_reward", "logprob"], "--student_reward must be one of"),
    (["--method", "fdpo", "--fdpo_divergence", "kl"], "--fdpo_divergence must be one of"),
    (["--method", "sft", "--wpo"], "--wpo weights pairwise preference losses; sft is not one"),
    (["--method", "discopop", "--discopop_tau", "2"], r"--discopop_tau must be in \(0, 1\]"),
    (["--method", "dpo", "--flip", "40"], r"--flip must be in \[0, 1\]; got 40"),
    (["--method", "dpo", "--data", "ultrafeedback"], "Without internet, use --data embedded"),
    (["--method", "dpo", "--data", "missing.jsonl"], "does not exist"),
    (["--method", "dpo", "--data_config", "helpful-base"], "--data_config and --data_split choose a hub dataset's"),
    (["--method", "dpo", "--data", "someone/pairs", "--data_split", "a,b,c"], "--data_split takes the hub dataset's"),
    (["--method", "dpo", "--resume_from", "no/such/dir"], "--resume_from no/such/dir: no such directory"),
    (["--method", "simpo", "--ref_sync_every", "2"], "--ref_sync_every .* simpo here: it reads no reference model"),
    (["--method", "dpo", "--ref_sync_every", "2", "--lora_r", "4"], "--ref_sync_every .*train without --lora_r"),
    (["--method", "dpo", "--ref_sync_alpha", "0"], r"--ref_sync_alpha must be in \(0, 1\]"),
    (["--method", "ipo+dpo"], "ipo and dpo read pi_ref's log-probs with different reductions"),
    (["--method", "dpo+sft", "--loss_weights", "1"], "has 1 weight\\(s\\) for 2 losses"),
    (["--method", "dpo", "--loss_weights", "1,2"], "--loss_weights weighs the losses of a combination"),
    (["--method", "bco_pair+sft"], "bco_pair keeps state across steps"),
    (["--method", "tgdpo"], "--method tgdpo needs --guidance_model"),
])
def test_bad_arguments_give_one_clear_error(cache, tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, *args)
    assert e.value.code != 0
    import re
    assert re.search(message, str(e.value)), str(e.value)
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_every_numeric_option_has_a_range():
    from dataclasses import fields
    from config import LIMITS
    numeric = {f.name for f in fields(train.Config) if f.type in (int, float, "int", "float")}
    assert numeric == set(LIMITS), numeric ^ set(LIMITS)
