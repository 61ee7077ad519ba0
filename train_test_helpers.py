"""Helpers shared by the tests that train (test_train.py, test_train_options.py, test_checkpoint.py, test_memory.py,
...): a run of train.py's real command line on the embedded-tiny task, its logged rows and final weights, a spy on a
registered loss, and train.py as a subprocess. Not a test file."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import checkpoint
import train
from losses import LOSSES

HERE = os.path.dirname(os.path.abspath(__file__))


def run(tmp_path, *args, name="run"):
    argv = ["--data", "embedded-tiny", "--no-final_check", "--eval_every", "0", "--out",
            str(tmp_path / name), *args]
    return train.main(argv)


def metrics(tmp_path, name="run"):
    with open(tmp_path / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def weights(tmp_path, name="run"):
    from safetensors.torch import load_file
    return load_file(os.path.join(checkpoint.latest(str(tmp_path / name)), "model.safetensors"))


def record_calls(monkeypatch, method):
    """Wrap the registered loss of `method`: every call's keyword arguments and positional tensors are kept."""
    calls = []
    info = LOSSES[method]

    def wrapped(*args, **kwargs):
        calls.append({"kwargs": kwargs, "args": [a.detach().clone() for a in args]})
        return info.fn(*args, **kwargs)
    monkeypatch.setitem(LOSSES, method, replace(info, fn=wrapped))
    return calls


def trainer_subprocess(args, env_extra=None, code=None):
    """`python train.py ARGS` (or `python -c CODE ARGS`) on the tiny task in the test session's cache."""
    cmd = [sys.executable, "train.py"] if code is None else [sys.executable, "-c", code]
    return subprocess.Popen([*cmd, "--data", "embedded-tiny", "--no-final_check", *args], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env_extra or {})))
