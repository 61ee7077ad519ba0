"""Tests of train.py's options, through its real command line (main(argv) parses exactly what `python train.py`
does), on the embedded-tiny task and the `tiny` model: each option changes what it should, checked against a value
derived here. What is trained on (--split, --max_pairs, a local file with a model directory), against what
(--ref_model, --oracle_model, the cached reference log-probs, none for reference-free methods), the student's
reward (--student_reward), the losses' running statistics (BCO's delta, KTO's z_ref) and WPO's weights, bf16
autocast on CPU, and exact gradient accumulation. test_train.py checks every method itself.
"""
import json
import math
import os
from dataclasses import replace

import pytest
import torch

import checkpoint
import common
import train
from losses import LOSSES
from train_test_helpers import metrics, record_calls, run, weights


# ------------------------------------------------------------------------------------------------------------
# Options that change what is trained on or against
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["deterministic", "nondeterministic"])
def test_split_keeps_the_top_or_bottom_third_of_gold_margins(cache, tiny_task, tmp_path, split):
    # recomputed here: |gold margin| of every training pair, its 1/3 and 2/3 quantiles; deterministic = pairs
    # strictly above the 2/3 quantile, non-deterministic = pairs at or below the 1/3 quantile
    margins = sorted(abs(r["chosen_gold"] - r["rejected_gold"]) for r in tiny_task["train"])
    q = lambda p: torch.quantile(torch.tensor(margins, dtype=torch.float64), p).item()   # noqa: E731
    expected = sum(m > q(2 / 3) for m in margins) if split == "deterministic" else sum(m <= q(1 / 3) for m in margins)
    s = run(tmp_path, "--method", "dpo", "--epochs", "0.5", "--split", split)
    assert s["train_pairs"] == expected and 0 < expected < len(margins) / 2


def test_max_pairs_caps_the_training_pairs(cache, tmp_path):
    s = run(tmp_path, "--method", "sft", "--epochs", "1", "--max_pairs", "10", "--batch_size", "4",
            "--micro_batch_size", "2")
    assert s["train_pairs"] == 10 and s["steps"] == math.ceil(s["train_examples"] / 4)


def test_ref_model_is_the_reference_the_loss_sees(cache, tiny_task, tmp_path):
    # with the policy as its own reference, the first DPO loss is ln 2; with --ref_model tiny (a random model),
    # h != 0 and the first loss differs. A trainer that ignored --ref_model would give ln 2 in both.
    run(tmp_path, "--method", "dpo", "--epochs", "0.25", "--ref_model", tiny_task["reference"], name="same")
    run(tmp_path, "--method", "dpo", "--epochs", "0.25", "--ref_model", "tiny", name="other")
    assert metrics(tmp_path, "same")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(metrics(tmp_path, "other")[0]["loss"] - math.log(2)) > 0.05


def test_oracle_model_is_the_oracle_backbone(cache, tmp_path):
    s = run(tmp_path, "--method", "distill", "--epochs", "0.25", "--oracle_model", "tiny", "--oracle_epochs", "1")
    report = json.loads(open(os.path.join(os.path.dirname(s["oracle"][0]), "report.json")).read())
    assert report["config"]["model"] == "tiny"


@pytest.mark.parametrize("student", ["implicit-sum", "implicit-mean", "head"])
def test_student_reward_is_what_the_flag_says(cache, tmp_path, monkeypatch, student):
    # drdo's positional inputs: (student chosen, student rejected, oracle chosen, oracle rejected, Sbar chosen,
    # Sbar rejected). implicit-mean: r = beta_r * Sbar exactly; implicit-sum: r / (beta_r * Sbar) = |y|, a
    # whole number of tokens (>= 1, not all 1); head: the zero-initialised head gives r = 0 at step 1.
    calls = record_calls(monkeypatch, "drdo")
    run(tmp_path, "--method", "drdo", "--epochs", "0.25", "--student_reward", student, "--beta_r", "0.3")
    rw, rl, _, _, sw, sl = calls[0]["args"]
    if student == "implicit-mean":
        torch.testing.assert_close((rw, rl), (0.3 * sw, 0.3 * sl))
    elif student == "implicit-sum":
        lengths = torch.cat([rw / (0.3 * sw), rl / (0.3 * sl)])
        torch.testing.assert_close(lengths, lengths.round(), atol=1e-3, rtol=0)
        assert lengths.min() >= 1 and lengths.max() > 1
    else:
        assert torch.equal(rw, torch.zeros_like(rw)) and torch.equal(rl, torch.zeros_like(rl))


def test_bco_delta_is_the_running_mean_of_past_steps_and_survives_resume(cache, tmp_path):
    # bco_pair's entry fills `delta` from the running mean of its own metric reward_mean = (r_w + r_l)/2 over
    # every pair of the PREVIOUS optimizer steps (registry `running`). The log shows both per step: delta at step
    # k must be the pair-weighted mean of reward_mean over steps 1..k-1 (0 at step 1), and the sums travel in the
    # checkpoint, so a stopped and resumed run equals an uninterrupted one bit for bit.
    args = ["--method", "bco_pair", "--epochs", "2", "--lr", "1e-3", "--save_every", "2"]
    s = run(tmp_path, *args, name="whole")
    rows = metrics(tmp_path, "whole")
    n = s["train_examples"]                      # windows of 8 pairs per epoch; the last of an epoch is short
    sizes = [min(8, n - i) for _ in range(2) for i in range(0, n, 8)]
    assert len(rows) == len(sizes) and rows[0]["bco/delta"] == 0.0
    total = pairs = 0.0
    for row, size in zip(rows, sizes):
        assert row["bco/delta"] == pytest.approx(total / pairs if pairs else 0.0, rel=1e-5, abs=1e-8)
        total, pairs = total + row["bco/reward_mean"] * size, pairs + size
    assert any(abs(r["bco/delta"]) > 1e-4 for r in rows)              # it does move away from 0
    run(tmp_path, *args, "--stop_after", "5", name="split")
    state = checkpoint.load_state(checkpoint.latest(str(tmp_path / "split")))
    assert state["step"] == 4 and state["running"]["delta"][1] == sum(sizes[:4])
    run(tmp_path, *args, "--resume", name="split")
    assert metrics(tmp_path, "split") == rows
    wa, wb = weights(tmp_path, "split"), weights(tmp_path, "whole")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kto_z_ref_is_the_detached_batch_estimate_its_registry_entry_leaves_to_it(cache, tmp_path, monkeypatch):
    # kto's entry fills beta and the two weights but not z_ref, so kto_loss estimates z_ref itself on every
    # micro-batch: max(0, mean of the pairs' (rho_w + rho_l) / 2), detached. Check it against the log-ratios
    # train.py passed in, on every training call; at step 1 pi = pi_ref, so z_ref = 0 and the loss is 1.
    import losses
    seen = []

    def spy(*args, **kwargs):
        out = losses.kto_loss(*args, **kwargs)
        pc, pr, rc, rr = args
        rho = ((pc - rc) + (pr - rr)).detach() / 2
        seen.append((set(kwargs), out[1]["z_ref"].double(), max(0.0, rho.double().mean().item()), pc.requires_grad))
        return out
    monkeypatch.setitem(LOSSES, "kto", replace(LOSSES["kto"], fn=spy))
    run(tmp_path, "--method", "kto", "--epochs", "0.5", "--lr", "1e-3")
    assert all(keys == {"beta", "desirable_weight", "undesirable_weight"} for keys, *_ in seen)
    for _, z, expected, _ in seen:
        torch.testing.assert_close(z, torch.full_like(z, expected), rtol=1e-5, atol=1e-6)
    assert any(grad and e > 0 for *_, e, grad in seen)                 # training calls, some with z_ref > 0
    first = metrics(tmp_path)[0]
    assert first["kto/z_ref"] == pytest.approx(0.0, abs=1e-6) and first["loss"] == pytest.approx(1.0, abs=1e-6)


def test_wpo_multiplies_each_pair_loss_by_its_detached_weight(cache, tmp_path):
    # --wpo with dpo: at step 1 pi = pi_ref, so every pair's DPO loss is log 2 and the weighted loss of the step is
    # log 2 times the mean weight (the weights themselves are tested in test_logps / test_models); and the run
    # still lowers its (weighted) objective
    s = run(tmp_path, "--method", "dpo", "--wpo", "--epochs", "2", "--lr", "1e-3")
    first = metrics(tmp_path)[0]
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
    import reference
    fresh = ["--max_length", "100"]                  # a length no other test uses: new cache keys
    run(tmp_path, "--method", "dpo", "--epochs", "0.25", *fresh, name="first")
    loaded = []
    for module in (train, reference):                # the policy (train.py) and pi_ref (reference.py)
        real_load = module.load_model
        monkeypatch.setattr(module, "load_model",
                            lambda name, *a, real_load=real_load, **k: loaded.append(name) or real_load(name, *a, **k))
    run(tmp_path, "--method", "ipo", "--epochs", "0.25", *fresh, name="ipo")      # mean log-probs: new entry
    run(tmp_path, "--method", "dpo", "--epochs", "0.25", *fresh, name="second")   # sum: cached by "first"
    # ipo: policy, then pi_ref for the training and the held-out pairs; dpo: the policy only
    assert loaded == ["embedded"] * 4


def test_bf16_autocast_on_cpu_stays_close_to_fp32(cache, tmp_path):
    # the same 3 DPO steps in fp32 and under bf16 autocast: step 1 is ln 2 in both (h = 0 exactly, whatever
    # the precision, since policy and reference are the same model under the same autocast); later losses
    # agree to bf16's precision
    common_args = ["--method", "dpo", "--model", "tiny", "--epochs", "1", "--lr", "1e-3", "--batch_size", "8"]
    run(tmp_path, *common_args, name="fp32")
    run(tmp_path, *common_args, "--bf16", name="bf16")
    a, b = metrics(tmp_path, "fp32"), metrics(tmp_path, "bf16")
    assert b[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=0.02)


# ------------------------------------------------------------------------------------------------------------
# Gradient accumulation, and a user's own data file
# ------------------------------------------------------------------------------------------------------------
def test_gradient_accumulation_is_exact(cache, tmp_path):
    # 4 micro-batches of 1 pair and 1 micro-batch of 4 pairs make the same gradient (each micro-batch adds
    # sum(losses) / pairs-in-window), so 5 fp32 steps give the same losses and gradient norms to 1e-6.
    # Weights get a looser bound: Adam divides by sqrt(v) + eps, which magnifies the ~1e-7 summation-order
    # differences of coordinates whose gradients are near 0 (measured: up to 6e-6 after 5 steps at lr 1e-3).
    args = ["--method", "dpo", "--model", "tiny", "--batch_size", "4", "--epochs", "0.5", "--lr", "1e-3"]
    run(tmp_path, *args, "--micro_batch_size", "1", name="accum")
    run(tmp_path, *args, "--micro_batch_size", "4", name="plain")
    for a, b in zip(metrics(tmp_path, "accum"), metrics(tmp_path, "plain")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
    wa, wb = weights(tmp_path, "accum"), weights(tmp_path, "plain")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-5


def test_a_local_file_with_a_model_directory(cache, tiny_task, tmp_path):
    # a user's own data: 40 pairs in a JSONL file, the tiny pi_ref as a model path; 10% are held out
    rows = (list(tiny_task["train"]) * 2)[:40]
    path = tmp_path / "pairs.jsonl"
    common.write_jsonl([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows], str(path))
    s = train.main(["--method", "dpo", "--data", str(path), "--model", tiny_task["reference"], "--epochs", "1",
                    "--out", str(tmp_path / "file")])
    assert s["train_pairs"] == 36 and s["steps"] == math.ceil(s["train_examples"] / 8)
    assert "final_check" not in s                                         # no gold to check
