"""Tests of train.py through its real command line (main(argv) parses exactly what `python train.py` does), on
the embedded-tiny task (a 50k-parameter pi_ref, built once per test session in ~10 s) and the `tiny` model.

Each run takes a few seconds. What is checked: every method lowers its own objective; gradient accumulation
is exact; a stopped run resumed from its checkpoint ends where an uninterrupted one does; the first DPO loss
is ln 2; reference-free methods never build a reference; bad arguments fail with one clear message; a
non-finite loss stops the run and keeps the last checkpoint; the checkpoint loads with AutoModelForCausalLM.
"""
import json
import math
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402
from losses import LOSSES  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def cache(tiny_task):
    """The session's embedded-tiny task (conftest.py) and the cache directory it lives in."""
    return os.environ["DRDO_CACHE"]


def run(tmp_path, *args, name="run"):
    argv = ["--data", "embedded-tiny", "--no-final_check", "--eval_every", "0", "--out",
            str(tmp_path / name), *args]
    return train.main(argv)


def metrics(tmp_path, name="run"):
    with open(tmp_path / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def weights(tmp_path, name="run"):
    from safetensors.torch import load_file
    return load_file(str(tmp_path / name / "checkpoint" / "model.safetensors"))


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_every_method_lowers_its_own_objective(cache, tmp_path, method):
    # 3 epochs over the 36 tiny training pairs at lr 1e-3: the method's loss on the training pairs, measured by
    # the same code before step 1 and after the last step, must go down (a broken gradient sign, a detached
    # input or a wrong argument order in compute_loss would leave it flat or push it up)
    oracle = ["--oracle_epochs", "15", "--oracle_lr", "3e-3"] if LOSSES[method].needs_oracle else []
    s = run(tmp_path, "--method", method, "--epochs", "3", "--lr", "1e-3", *oracle)
    assert s["steps"] == math.ceil(3 * 36 / 8) or s["steps"] > 0
    assert s["objective_end"] < s["objective_start"] - 1e-3, s


def test_a_new_loss_trains_through_its_registry_entry_alone(cache, tmp_path, monkeypatch):
    # "Adding a loss" in the README: one function plus one registry entry; no edit to train.py. A toy loss,
    # the squared log-ratio margin pulled to a target 1/beta, registered under a new name, must train through
    # the CLI, receive exactly the inputs its entry names (summed policy and cached reference log-probs) and
    # the hyper-parameter its entry maps (beta <- Config.beta), and lower its own objective.
    from losses import LossInfo
    seen = []

    def toy_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 *, beta):
        seen.append({"beta": beta, "ref": (reference_chosen_logps.clone(), reference_rejected_logps.clone()),
                     "policy_requires_grad": policy_chosen_logps.requires_grad})
        h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
        losses = (h - 1.0 / beta) ** 2
        return losses, {"chosen_rewards": beta * h.detach(), "rejected_rewards": 0 * h.detach()}

    monkeypatch.setitem(LOSSES, "toy", LossInfo(toy_loss, ("policy", "reference"), False, {"beta": "beta"}))
    s = run(tmp_path, "--method", "toy", "--beta", "0.37", "--epochs", "2", "--lr", "1e-3")
    assert {x["beta"] for x in seen} == {0.37}
    assert any(x["policy_requires_grad"] for x in seen)
    # at step 1 the policy is pi_ref: the reference log-probs it was given equal the policy's own (h = 0 ->
    # loss (1/0.37)^2 = 7.3046 on every pair)
    first = metrics(tmp_path)[0]
    assert first["loss"] == pytest.approx((1 / 0.37) ** 2, rel=1e-5)
    assert s["reference_built"] is True
    assert s["objective_end"] < s["objective_start"] - 1e-3


def test_first_dpo_loss_is_ln2(cache, tmp_path):
    # at step 1 the policy IS pi_ref (same weights, dropout off), so h = 0 for every pair and loss = log 2
    run(tmp_path, "--method", "dpo", "--epochs", "0.25")
    first = metrics(tmp_path)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_gradient_accumulation_is_exact(cache, tmp_path):
    # 4 micro-batches of 1 pair and 1 micro-batch of 4 pairs make the same gradient (each micro-batch adds
    # sum(losses) / pairs-in-window), so 5 fp32 steps give the same losses and gradient norms to 1e-6.
    # Weights get a looser bound: Adam divides by sqrt(v) + eps, which magnifies the ~1e-7 summation-order
    # differences of coordinates whose gradients are near 0 (measured: up to 6e-6 after 5 steps at lr 1e-3).
    common = ["--method", "dpo", "--model", "tiny", "--batch_size", "4", "--epochs", "0.5", "--lr", "1e-3"]
    run(tmp_path, *common, "--micro_batch_size", "1", name="accum")
    run(tmp_path, *common, "--micro_batch_size", "4", name="plain")
    for a, b in zip(metrics(tmp_path, "accum"), metrics(tmp_path, "plain")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
    wa, wb = weights(tmp_path, "accum"), weights(tmp_path, "plain")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-5


def test_stopped_and_resumed_run_equals_uninterrupted(cache, tmp_path):
    # checkpoint every 2 steps, stop after step 5 (the checkpoint is at step 4), resume: steps 5.. are replayed
    # from the checkpoint's optimizer/scheduler state and the step-indexed data order -> identical in fp32
    common = ["--method", "drdo", "--epochs", "2", "--lr", "1e-3", "--save_every", "2"]
    run(tmp_path, *common, name="whole")
    run(tmp_path, *common, "--stop_after", "5", name="split")
    state = torch.load(tmp_path / "split" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4
    run(tmp_path, *common, "--resume", name="split")
    assert metrics(tmp_path, "split") == metrics(tmp_path, "whole")
    wa, wb = weights(tmp_path, "split"), weights(tmp_path, "whole")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    head = [torch.load(tmp_path / n / "checkpoint" / "reward_head.pt") for n in ("split", "whole")]
    assert torch.equal(head[0]["weight"], head[1]["weight"])


def test_bco_delta_is_the_running_mean_of_past_steps_and_survives_resume(cache, tiny_task, tmp_path):
    # bco_pair's entry fills `delta` from the running mean of its own metric reward_mean = (r_w + r_l)/2 over
    # every pair of the PREVIOUS optimizer steps (registry `running`). The log shows both per step: delta at step
    # k must be the pair-weighted mean of reward_mean over steps 1..k-1 (0 at step 1), and the sums travel in the
    # checkpoint, so a stopped and resumed run equals an uninterrupted one bit for bit.
    common = ["--method", "bco_pair", "--epochs", "2", "--lr", "1e-3", "--save_every", "2"]
    run(tmp_path, *common, name="whole")
    rows = metrics(tmp_path, "whole")
    n_train = len(tiny_task["train"])
    sizes = [sum(len(m) for m in w) for w in train.windows(n_train, train.resolve(train.Config(epochs=2)))]
    assert len(rows) == len(sizes) and rows[0]["bco/delta"] == 0.0
    total = pairs = 0.0
    for row, n in zip(rows, sizes):
        assert row["bco/delta"] == pytest.approx(total / pairs if pairs else 0.0, rel=1e-5, abs=1e-8)
        total, pairs = total + row["bco/reward_mean"] * n, pairs + n
    assert any(abs(r["bco/delta"]) > 1e-4 for r in rows)              # it does move away from 0
    run(tmp_path, *common, "--stop_after", "5", name="split")
    state = torch.load(tmp_path / "split" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and state["running"]["delta"][1] == sum(sizes[:4])
    run(tmp_path, *common, "--resume", name="split")
    assert metrics(tmp_path, "split") == rows
    wa, wb = weights(tmp_path, "split"), weights(tmp_path, "whole")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kto_z_ref_is_the_detached_batch_estimate_its_registry_entry_leaves_to_it(cache, tmp_path, monkeypatch):
    # kto's entry fills beta and the two weights but not z_ref, so kto_loss estimates z_ref itself on every
    # micro-batch: max(0, mean of the pairs' (rho_w + rho_l) / 2), detached. Check it against the log-ratios
    # train.py passed in, on every training call; at step 1 pi = pi_ref, so z_ref = 0 and the loss is 1.
    import dataclasses

    import losses
    seen = []

    def spy(*args, **kwargs):
        out = losses.kto_loss(*args, **kwargs)
        pc, pr, rc, rr = args
        rho = ((pc - rc) + (pr - rr)).detach() / 2
        seen.append((set(kwargs), out[1]["z_ref"].double(), max(0.0, rho.double().mean().item()), pc.requires_grad))
        return out
    monkeypatch.setitem(LOSSES, "kto", dataclasses.replace(LOSSES["kto"], fn=spy))
    run(tmp_path, "--method", "kto", "--epochs", "0.5", "--lr", "1e-3")
    assert all(keys == {"beta", "desirable_weight", "undesirable_weight"} for keys, *_ in seen)
    for _, z, expected, _ in seen:
        torch.testing.assert_close(z, torch.full_like(z, expected), rtol=1e-5, atol=1e-6)
    assert any(grad and e > 0 for *_, e, grad in seen)                 # training calls, some with z_ref > 0
    first = metrics(tmp_path)[0]
    assert first["kto/z_ref"] == pytest.approx(0.0, abs=1e-6) and first["loss"] == pytest.approx(1.0, abs=1e-6)


def test_wpo_multiplies_each_pair_loss_by_its_detached_weight(cache, tmp_path):
    # --wpo with dpo: at step 1 pi = pi_ref, so every pair's DPO loss is log 2 and the weighted loss of the step is
    # log 2 times the mean weight (the weights themselves are tested in test_losses / test_models); and the run
    # still lowers its (weighted) objective
    s = run(tmp_path, "--method", "dpo", "--wpo", "--epochs", "2", "--lr", "1e-3")
    rows = metrics(tmp_path)
    first = rows[0]
    assert 0 < first["wpo/weight"] != pytest.approx(1.0)
    assert first["loss"] == pytest.approx(math.log(2) * first["wpo/weight"], rel=1e-5)
    assert s["objective_end"] < s["objective_start"]


@pytest.mark.parametrize("method", ["drdo", "simpo", "orpo", "sft", "cpo"])
def test_reference_free_methods_build_no_reference(cache, tmp_path, monkeypatch, method):
    def no_reference(*args, **kwargs):
        raise AssertionError(f"{method} asked for reference log-probs")
    monkeypatch.setattr(train, "reference_logps", no_reference)
    loaded = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda name, *a, **k: loaded.append(name) or real_load(name, *a, **k))
    s = run(tmp_path, "--method", method, "--epochs", "0.25")
    assert s["reference_built"] is False
    # train.py loads exactly one model, the policy (drdo's Oracle backbone is loaded by oracle.py, to be
    # trained as the Oracle, never as pi_ref)
    assert loaded == ["embedded"], loaded


def test_reference_methods_use_the_cache(cache, tmp_path, monkeypatch):
    fresh = ["--max_length", "100"]                  # a length no other test uses: new cache keys
    run(tmp_path, "--method", "dpo", "--epochs", "0.25", *fresh, name="first")
    loaded = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda name, *a, **k: loaded.append(name) or real_load(name, *a, **k))
    run(tmp_path, "--method", "ipo", "--epochs", "0.25", *fresh, name="ipo")      # mean log-probs: new entry
    run(tmp_path, "--method", "dpo", "--epochs", "0.25", *fresh, name="second")   # sum: cached by "first"
    # ipo: policy, then pi_ref for the training and the held-out pairs; dpo: the policy only
    assert loaded == ["embedded"] * 4


@pytest.mark.parametrize("args, message", [
    (["--method", "dpox"], "unknown --method 'dpox'"),
    (["--method", "dpo", "--batch_size", "6", "--micro_batch_size", "4"], "must be a positive multiple"),
    (["--method", "dpo", "--batch_size", "0"], "must be a positive multiple"),
    (["--method", "dpo", "--model", "opt-125m"], "Without internet, use one of"),
    (["--method", "dpo", "--model", "no-such-org/no-such-model"], "Without internet, use one of"),
    (["--method", "dpo", "--split", "hard"], "--split must be"),
    (["--method", "drdo", "--score", "margin"], "--score must be"),
    (["--method", "edpo", "--aggregate", "max"], "--aggregate must be"),
    (["--method", "fdpo", "--fdpo_divergence", "kl"], "--fdpo_divergence must be"),
    (["--method", "sft", "--wpo"], "--wpo weights pairwise preference losses; sft is not one"),
    (["--method", "dpo", "--flip", "40"], "--flip is a share of pairs"),
    (["--method", "dpo", "--data", "ultrafeedback"], "Without internet, use --data embedded"),
    (["--method", "dpo", "--data", "missing.jsonl"], "does not exist"),
])
def test_bad_arguments_give_one_clear_error(cache, tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, *args)
    assert message in str(e.value)


def test_non_finite_loss_stops_and_keeps_the_checkpoint(cache, tmp_path, monkeypatch):
    real = train.compute_loss
    calls = {"n": 0}

    def poisoned(cfg, model, batch, *running):
        losses, metrics, logps = real(cfg, model, batch, *running)
        calls["n"] += model.training                     # count training micro-batches only (not evaluation)
        return (losses * float("nan") if calls["n"] > 3 else losses), metrics, logps
    monkeypatch.setattr(train, "compute_loss", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 4 .*Last good checkpoint: .*checkpoint"):
        train.train(train.resolve(train.Config(method="dpo", data="embedded-tiny", save_every=2, final_check=False,
                                               eval_every=0, out=str(tmp_path / "nan"))), log=lambda *_: None)
    state = torch.load(tmp_path / "nan" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2


def test_checkpoint_loads_with_automodel_and_cli_runs(cache, tmp_path):
    # the real entry point, in a subprocess, including the final gold check against pi_ref's cached samples
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "train.py", "--method", "simpo", "--data", "embedded-tiny", "--epochs",
                        "0.5", "--out", str(out)], cwd=HERE, capture_output=True, text=True,
                       env=dict(os.environ, DRDO_CACHE=cache))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held-out check" in r.stdout
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    assert model.config.vocab_size == 512
    with open(out / "checkpoint" / "train_config.json") as f:
        assert json.load(f)["method"] == "simpo"
    summary = json.loads((out / "summary.json").read_text())
    fc = summary["final_check"]
    assert fc["win"] + fc["tie"] + fc["loss"] == pytest.approx(1.0)


def test_benchmark_prints_consistent_numbers(cache, tmp_path, capsys):
    import bench
    res = bench.main(["--method", "dpo", "--model", "tiny", "--data", "embedded-tiny", "--steps", "2",
                      "--batch_size", "4", "--micro_batch_size", "2", "--max_length", "48", "--max_prompt_length", "16"])
    assert res["tokens_per_step"] == 2 * 4 * 48
    assert res["step_s"] > 0 and res["tokens_per_s"] == pytest.approx(res["tokens_per_step"] / res["step_s"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "dpo"


def test_a_local_file_with_a_model_directory(cache, tiny_task, tmp_path):
    # a user's own data: 40 pairs in a JSONL file, the tiny pi_ref as a model path; 10% are held out
    rows = (list(tiny_task["train"]) * 2)[:40]
    path = tmp_path / "pairs.jsonl"
    common.write_jsonl([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows], str(path))
    s = train.main(["--method", "dpo", "--data", str(path), "--model", tiny_task["reference"], "--epochs", "1",
                    "--out", str(tmp_path / "file")])
    assert s["steps"] == math.ceil(36 / 8) and "final_check" not in s     # 36 train pairs; no gold to check
