"""The path a new user takes: every command line started in a fresh copy of the checkout (no .cache/, no
runs/), with no DRDO_CACHE and none of the Hugging Face offline variables set. The rest of the suite shares
one private cache (conftest.py), which would hide a crash that only a first run meets (a missing cache
directory, a file written before its folder exists). The network is unreachable here, so these tests also
take the offline path of a user who never heard of HF_HUB_OFFLINE: it must end in the clear message, fast.
About 40 s (the tiny task is built from scratch once, in the copy).
"""
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def fresh_clone(tmp_path_factory):
    """A copy of the repository's code as a fresh clone has it, and the environment of a new user."""
    root = tmp_path_factory.mktemp("fresh_clone")
    for path in glob.glob(os.path.join(HERE, "*.py")) + glob.glob(os.path.join(HERE, "requirements.txt")):
        shutil.copy(path, root)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DRDO_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return root, env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return fresh_clone(tmp_path_factory)


def cli(checkout, *args, timeout=900):
    root, env = checkout
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


def test_train_oracle_and_evaluate_from_an_empty_checkout(checkout):
    root, _ = checkout
    assert not (root / ".cache").exists() and not (root / "runs").exists()
    # train.py with a method that needs the Oracle AND reference log-probs (e-DPO): every cache directory it
    # writes (task, Oracle, scores, reference log-probs) must be created on the way
    r, _ = cli(checkout, "train.py", "--method", "edpo", "--data", "embedded-tiny", "--epochs", "0.5",
               "--oracle_epochs", "1", "--out", "runs/edpo")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out check" in r.stdout
    made = sorted(os.listdir(root / ".cache"))
    assert any(d.startswith("embedded-task-") for d in made) and any(d.startswith("reflogps-") for d in made)
    assert any(d.startswith("oracle-") for d in made) and any(d.startswith("scored-") for d in made)
    # oracle.py, then evaluate.py on the run that was just trained
    r, _ = cli(checkout, "oracle.py", "--data", "embedded-tiny", "--epochs", "1", "--out", "oracle_run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((root / "oracle_run" / "report.json").read_text())["members"] == ["member-0"]
    r, _ = cli(checkout, "evaluate.py", "--data", "embedded-tiny", "--policies", "runs/edpo", "--prompts", "4",
               "--samples", "1", "--temperatures", "1", "--out", "eval_out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((root / "eval_out" / "results.json").read_text())["sets"]["in_distribution"]["T=1"]
    # online.py: the Oracle annotator trained on the way, one round of SPPO on pi_ref's own samples, judged
    r, _ = cli(checkout, "online.py", "--method", "sppo", "--data", "embedded-tiny", "--rounds", "1", "--oracle_epochs",
               "1", "--eval_prompts", "4", "--sppo_eta", "10", "--out", "runs/online")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((root / "runs" / "online" / "online.json").read_text())["rounds"][0]
    assert record["pairs"] > 0 and math.isfinite(record["kl"]) and math.isfinite(record["annotator_gain"])


OFFLINE_COMMANDS = [
    ["train.py", "--method", "dpo", "--model", "opt-125m"],
    ["train.py", "--method", "dpo", "--data", "ultrafeedback"],
    ["oracle.py", "--model", "opt-125m"],
    ["train.py", "--method", "dpo", "--data", "hh", "--data_config", "helpful-base"],
    ["oracle.py", "--data", "tldr", "--data_split", "train,validation"],
]


@pytest.fixture(scope="module")
def offline_runs(checkout):
    """Each command of OFFLINE_COMMANDS started at once (they are independent; most of each is importing torch),
    -> {command: (finished process, seconds from its start to its end)}."""
    root, env = checkout
    t0 = time.time()
    procs = {tuple(a): subprocess.Popen([sys.executable, *a], cwd=root, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for a in OFFLINE_COMMANDS}
    done = {}
    for args, p in procs.items():
        out, err = p.communicate(timeout=900)
        done[args] = (subprocess.CompletedProcess(p.args, p.returncode, out, err), time.time() - t0)
    return done


@pytest.mark.parametrize("args", OFFLINE_COMMANDS)
def test_no_network_and_no_offline_variable_gives_the_clear_message_fast(offline_runs, args):
    # transformers / datasets alone would retry for about a minute; models.load_model and data.load_preferences
    # check once whether the hub is reachable (common.hub_reachable) and go straight to the local cache. The five
    # commands run side by side, so each one's time includes waiting for the CPU (an upper bound on its own).
    r, seconds = offline_runs[tuple(args)]
    assert r.returncode != 0
    assert "Without internet, use" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert seconds < 45, seconds


def test_local_chat_checkpoint_and_conversational_file_from_an_empty_checkout(tmp_path_factory):
    # the command of the report: python train.py --method dpo --model <local checkpoint> --data my_pairs.jsonl, on
    # a fresh clone; the checkpoint has a ChatML template (SmolLM2-like, built here) and the file is conversational
    # in the implicit-prompt format. Then evaluate.py on that file, judged by the default Oracle (trained here).
    import itertools

    from test_evaluate import tiny_llama_dir
    from test_tokenization import smollm2_like
    checkout = fresh_clone(tmp_path_factory)
    root, _ = checkout
    ckpt = tiny_llama_dir(root.parent / "local_checkpoint", smollm2_like(), seed=0)
    rows = [{"chosen": [{"role": "user", "content": " ".join(w)}, {"role": "assistant", "content": "a b"}],
             "rejected": [{"role": "user", "content": " ".join(w)}, {"role": "assistant", "content": "c"}]}
            for w in itertools.product("qabc", repeat=2)]                  # 16 pairs, no prompt field
    (root / "my_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not (root / ".cache").exists()
    r, _ = cli(checkout, "train.py", "--method", "dpo", "--model", ckpt, "--data", "my_pairs.jsonl", "--epochs", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "14 training pairs" in r.stdout and "2 held-out pairs" in r.stdout
    assert any(d.startswith("reflogps-") for d in os.listdir(root / ".cache"))
    run = root / "runs" / "dpo-local_checkpoint-my_pairs.jsonl-all-flip0-s0"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2                 # 14 pairs, batches of 8
    r, _ = cli(checkout, "evaluate.py", "--data", "my_pairs.jsonl", "--reference", ckpt, "--policies", str(run),
               "--prompts", "2", "--samples", "1", "--temperatures", "1", "--max_new_tokens", "4", "--out", "eval_out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CIRCULAR for DRDO" in r.stdout
    assert any(d.startswith("oracle-") for d in os.listdir(root / ".cache"))
