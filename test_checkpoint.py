"""What survives, through train.py's real command line on the embedded-tiny task: stopped-and-resumed runs
equal uninterrupted ones (DRDO with its head, DPO with cached reference log-probs, a kill while saving, a
real SIGTERM); checkpoint retention; a damaged checkpoint, an empty --resume, an out-of-memory error and a
non-finite loss each give one clear message and keep the last checkpoint; a checkpoint loads with
AutoModelForCausalLM.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import train
from train_test_helpers import HERE, metrics, run, trainer_subprocess, weights


@pytest.mark.parametrize("method", [["--method", "drdo", "--student_reward", "head"], ["--method", "dpo"],
                                    ["--method", "dpo", "--packing", "both"]])
def test_stopped_and_resumed_run_equals_uninterrupted(cache, tmp_path, method, capsys):
    # checkpoint every 2 steps, stop after step 5 (the checkpoint is at step 4), resume: steps 5.. are replayed
    # from the checkpoint's optimizer/scheduler state and the step-indexed data order -> identical in fp32.
    # drdo: with its reward head; dpo: with its reference log-probs read from the cache on resume; packed rows.
    args = [*method, "--epochs", "2", "--lr", "1e-3", "--save_every", "2", "--eval_every", "3"]
    run(tmp_path, *args, name="whole")
    run(tmp_path, *args, "--stop_after", "5", name="split")
    assert checkpoint.load_state(checkpoint.latest(str(tmp_path / "split")))["step"] == 4
    capsys.readouterr()
    run(tmp_path, *args, "--resume", name="split")
    if "dpo" in method:                               # the resumed run reads pi_ref's cached log-probs back
        said = capsys.readouterr().out
        lines = [line for line in said.splitlines() if line.startswith("pi_ref log-probs")]
        assert len(lines) == 2 and all(": cached in" in line for line in lines), lines
    assert metrics(tmp_path, "split") == metrics(tmp_path, "whole")
    wa, wb = weights(tmp_path, "split"), weights(tmp_path, "whole")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if "head" in method:
        head = [torch.load(os.path.join(checkpoint.latest(str(tmp_path / n)), "reward_head.pt")) for n in ("split", "whole")]
        assert torch.equal(head[0]["weight"], head[1]["weight"])


def test_tr_dpo_reference_sync_resumes_exactly(cache, tmp_path):
    # the synced reference is part of the run's state: stopped after step 3 (checkpoint at step 2, just after a
    # sync) and resumed, the run equals the uninterrupted one (without the reference in the checkpoint, the resumed
    # run would restart from pi_ref and differ from step 3 on)
    args = ["--method", "dpo", "--epochs", "2", "--lr", "1e-3", "--save_every", "2", "--ref_sync_every", "2",
            "--ref_sync_alpha", "0.5"]
    run(tmp_path, *args, name="whole")
    run(tmp_path, *args, "--stop_after", "3", name="split")
    run(tmp_path, *args, "--resume", name="split")
    assert metrics(tmp_path, "split") == metrics(tmp_path, "whole")
    assert metrics(tmp_path, "whole")[2]["loss"] != pytest.approx(math.log(2), abs=1e-4)   # soft: step 3 not at ln 2


def test_save_total_limit_keeps_the_newest_checkpoints(cache, tmp_path):
    run(tmp_path, "--method", "sft", "--epochs", "1", "--save_every", "1", "--save_total_limit", "2")
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(tmp_path / "run") if d.startswith("checkpoint-"))
    n = json.loads((tmp_path / "run" / "summary.json").read_text())["steps"]
    assert steps == [n - 1, n] and n >= 3


def test_killed_while_saving_resumes_from_the_previous_checkpoint(cache, tmp_path):
    # a real SIGKILL in the middle of writing checkpoint-4 (after the weights, before trainer_state.pt): the
    # half-written directory is never picked; --resume continues from checkpoint-2 to the uninterrupted result
    args = ["--method", "dpo", "--epochs", "2", "--lr", "1e-3", "--save_every", "2", "--eval_every", "0"]
    run(tmp_path, *args, name="whole")
    kill_on_step_4 = (
        "import os, signal, sys, torch, checkpoint\n"
        "real = torch.save\n"
        "def save(obj, path, *a, **k):\n"
        "    if str(path).endswith('trainer_state.pt') and 'checkpoint-4' in str(path):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(obj, path, *a, **k)\n"
        "checkpoint.torch.save = save\n"
        "import train\ntrain.main(sys.argv[1:])\n")
    p = trainer_subprocess([*args, "--out", str(tmp_path / "killed")], code=kill_on_step_4)
    p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL
    assert os.path.isdir(tmp_path / "killed" / "checkpoint-4.tmp")
    assert checkpoint.latest(str(tmp_path / "killed")).endswith("checkpoint-2")
    run(tmp_path, *args, "--resume", name="killed")
    assert metrics(tmp_path, "killed") == metrics(tmp_path, "whole")
    assert not os.path.exists(tmp_path / "killed" / "checkpoint-4.tmp")


def test_sigterm_saves_prints_the_resume_command_and_resumes_exactly(cache, tmp_path):
    # a real SIGTERM to a training process: it finishes its step, saves, prints the command that resumes, and
    # exits 128 + 15; running that command gives the uninterrupted run's metrics and weights
    args = ["--method", "drdo", "--student_reward", "head", "--epochs", "10", "--lr", "1e-4", "--save_every", "1000",
            "--eval_every", "0", "--batch_size", "4", "--micro_batch_size", "4"]
    p = trainer_subprocess([*args, "--out", str(tmp_path / "term")])
    log = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    command = out.split("Resume with:\n")[1].splitlines()[0].strip()
    stopped_at = len(log.read_text().splitlines())
    assert checkpoint.latest(str(tmp_path / "term")).endswith(f"checkpoint-{stopped_at}")
    assert command.startswith("python train.py ") and command.endswith(" --resume")
    r = subprocess.run(command.replace("python", sys.executable, 1).split(), cwd=HERE, capture_output=True,
                       text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-2000:]
    run(tmp_path, *args, name="whole")
    assert metrics(tmp_path, "term") == metrics(tmp_path, "whole")
    wa, wb = weights(tmp_path, "term"), weights(tmp_path, "whole")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------------------
# Failures: one clear message each, nothing lost
# ------------------------------------------------------------------------------------------------------------
def test_resume_with_nothing_to_resume_names_the_directory(cache, tmp_path):
    with pytest.raises(SystemExit, match=r"--resume: .*empty_run holds no complete checkpoint"):
        run(tmp_path, "--method", "dpo", "--resume", name="empty_run")


@pytest.mark.parametrize("damage", ["model.safetensors", "trainer_state.pt", "tokenizer.json", "config.json"])
def test_a_damaged_checkpoint_names_its_file_and_the_older_checkpoint(cache, tmp_path, damage):
    run(tmp_path, "--method", "sft", "--epochs", "1", "--save_every", "2")
    newest = checkpoint.latest(str(tmp_path / "run"))
    path = os.path.join(newest, damage)
    with open(path, "r+b") as f:                              # truncate the file to a third
        f.truncate(os.path.getsize(path) // 3)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "--method", "sft", "--epochs", "1", "--save_every", "2", "--resume")
    older = checkpoint.complete(str(tmp_path / "run"))[-2]
    assert f"{damage}" in str(e.value) and f"--resume_from {older}" in str(e.value), str(e.value)
    s = run(tmp_path, "--method", "sft", "--epochs", "1", "--save_every", "2", "--resume_from", older)
    assert s["steps"] > int(older.rsplit("-", 1)[1])


def test_non_finite_loss_stops_and_keeps_the_checkpoint(cache, tmp_path, monkeypatch):
    real = train.compute_loss
    calls = {"n": 0}

    def poisoned(cfg, model, batch, keywords=None):
        losses, metrics_, logps = real(cfg, model, batch, keywords)
        calls["n"] += model.training                     # count training micro-batches only (not evaluation)
        return (losses * float("nan") if calls["n"] > 3 else losses), metrics_, logps
    monkeypatch.setattr(train, "compute_loss", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 4 .*Last good checkpoint: .*checkpoint-2"):
        train.train(train.resolve(train.Config(method="dpo", data="embedded-tiny", save_every=2, final_check=False,
                                               eval_every=0, out=str(tmp_path / "nan"))), log=lambda *_: None)
    assert checkpoint.load_state(checkpoint.latest(str(tmp_path / "nan")))["step"] == 2


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")])
def test_out_of_memory_names_the_flags_that_reduce_memory(cache, tmp_path, monkeypatch, error):
    real = train.compute_loss
    calls = {"n": 0}

    def oom(cfg, model, batch, keywords=None):
        calls["n"] += model.training
        if calls["n"] > 3:
            raise error
        return real(cfg, model, batch, keywords)
    monkeypatch.setattr(train, "compute_loss", oom)
    with pytest.raises(SystemExit, match=r"out of memory at step 4 .*--micro_batch_size \(now 8.*--max_length.*"
                                         r"--gradient_checkpointing.*--lora_r 16.*last checkpoint: .*checkpoint-2"):
        run(tmp_path, "--method", "dpo", "--save_every", "2")
    assert checkpoint.load_state(checkpoint.latest(str(tmp_path / "run")))["step"] == 2


def test_checkpoint_loads_with_automodel_and_cli_runs(cache, tmp_path):
    # the real entry point, in a subprocess, including the final gold check against pi_ref's cached samples
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "train.py", "--method", "simpo", "--data", "embedded-tiny", "--epochs",
                        "0.5", "--out", str(out)], cwd=HERE, capture_output=True, text=True,
                       env=dict(os.environ, DRDO_CACHE=cache))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert model.config.vocab_size == 512
    with open(os.path.join(summary["checkpoint"], "train_config.json")) as f:
        assert json.load(f)["method"] == "simpo"
    fc = summary["final_check"]
    # the printed line carries the summary's own numbers
    assert f"gain {fc['gain']:+.3f} +- {fc['gain_se']:.3f}" in r.stdout
