"""Tests of train.py through its real command line (main(argv) parses exactly what `python train.py` does), on
the embedded-tiny task (a 50k-parameter pi_ref, built once per test session) and the `tiny` model.

Each run takes a few seconds. What is checked, each against a value derived here rather than read back:
every method lowers its own objective in exactly the number of steps the data and batch sizes imply, and its
loss receives exactly the hyper-parameters given on the command line; a toy loss trains through its registry
entry alone; every data and model option changes what it should (split, max_pairs, ref_model, oracle_model,
student_reward); bf16 autocast on CPU; gradient accumulation is exact; stopped-and-resumed runs equal
uninterrupted ones (DRDO with its head, DPO with cached reference log-probs, a kill while saving, a real
SIGTERM); checkpoint retention; a damaged checkpoint, an empty --resume, an out-of-memory error and a
non-finite loss each give one clear message and keep the last checkpoint; bad arguments; the benchmark.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
import common  # noqa: E402
import tokenization  # noqa: E402
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


# ------------------------------------------------------------------------------------------------------------
# Every method: learns, in the right number of steps, with exactly the hyper-parameters it was given
# ------------------------------------------------------------------------------------------------------------
FLAGS = ["--beta", "0.123", "--label_smoothing", "0.07", "--kl_coef", "0.21", "--aggregate", "example_min",
         "--simpo_beta", "1.7", "--simpo_gamma", "0.3", "--orpo_beta", "0.45", "--alpha", "0.6", "--gamma", "1.5",
         "--score", "odds", "--distill_weight", "0.8", "--beta_r", "0.09", "--exo_epsilon", "0.002",
         "--discopop_tau", "0.07", "--fdpo_divergence", "js_divergence", "--fdpo_alpha", "0.3", "--cpo_alpha", "0.8",
         "--kto_desirable_weight", "1.2", "--kto_undesirable_weight", "0.9"]
# What each loss must receive from FLAGS, written out by hand (not read from the registry).
EXPECTED_KWARGS = {
    "dpo": {"beta": 0.123}, "ipo": {"beta": 0.123}, "hinge": {"beta": 0.123}, "distill": {"beta": 0.123},
    "cdpo": {"beta": 0.123, "label_smoothing": 0.07}, "rdpo": {"beta": 0.123, "label_smoothing": 0.07},
    "pdpo": {"beta": 0.123, "kl_coef": 0.21}, "edpo": {"beta": 0.123, "kl_coef": 0.21, "aggregate": "example_min"},
    "simpo": {"beta": 1.7, "gamma": 0.3}, "orpo": {"beta": 0.45}, "sft": {},
    "drdo": {"alpha": 0.6, "gamma": 1.5, "score": "odds", "distill_weight": 0.8},
    "nca": {"beta": 0.123}, "apo_zero": {"beta": 0.123}, "apo_down": {"beta": 0.123}, "sppo_hard": {"beta": 0.123},
    "exo": {"beta": 0.123, "epsilon": 0.002}, "bco_pair": {"beta": 0.123}, "discopop": {"beta": 0.123, "tau": 0.07},
    "fdpo": {"beta": 0.123, "divergence": "js_divergence", "alpha": 0.3}, "cpo": {"beta": 0.123, "alpha": 0.8},
    "kto": {"beta": 0.123, "desirable_weight": 1.2, "undesirable_weight": 0.9},
}


def test_every_registered_method_has_its_expected_keywords_written_here():
    assert set(EXPECTED_KWARGS) == set(LOSSES), "a new loss needs its line in EXPECTED_KWARGS"


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_every_method_lowers_its_own_objective_with_the_given_hyperparameters(cache, tiny_task, tmp_path,
                                                                             monkeypatch, method):
    # 3 epochs at lr 1e-3: the method's loss on the training pairs, measured by the same code before step 1 and
    # after the last step, must go down (a broken gradient sign, a detached input or a wrong argument order
    # would leave it flat or push it up); every call of the loss gets exactly the flags' values
    calls = record_calls(monkeypatch, method)
    oracle = ["--oracle_epochs", "15", "--oracle_lr", "3e-3"] if LOSSES[method].needs_oracle else []
    s = run(tmp_path, "--method", method, "--epochs", "3", "--lr", "1e-3", *FLAGS, *oracle)
    assert s["objective_end"] < s["objective_start"] - 1e-3, s
    # every call has exactly the expected keywords; on evaluation steps, a loss with named terms (drdo) is also
    # called once per term with that term's overrides (train.term_grad_norms); running-mean keywords (bco_pair's
    # delta, from step 2 on) are checked in their own test
    expected = EXPECTED_KWARGS[method]
    allowed = [expected] + [expected | o for o in LOSSES[method].terms.values()]
    given = [{k: v for k, v in c["kwargs"].items() if k not in LOSSES[method].running} for c in calls]
    assert all(kw in allowed for kw in given), [kw for kw in given if kw not in allowed]
    assert sum(kw == expected for kw in given) >= s["steps"]
    # steps: each of the 3 epochs is ceil(n / 8) windows of at most 8 pairs, n = pairs that tokenize
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_task["reference"])
    n = len(tokenization.tokenize_dataset(tok, tiny_task["train"], 128, 64, log=lambda *_: None)[0])
    assert s["train_examples"] == n and s["steps"] == 3 * math.ceil(n / 8), (s["steps"], n)


def test_a_new_loss_trains_through_its_registry_entry_alone(cache, tmp_path, monkeypatch):
    # "Adding a loss" in the README: one function plus one registry entry; no edit to train.py. A toy loss,
    # the squared log-ratio margin pulled to a target 1/beta, registered under a new name, must train through
    # the CLI, receive exactly the inputs its entry names (summed policy and cached reference log-probs) and
    # the hyper-parameter its entry maps (beta <- Config.beta), and lower its own objective.
    from losses import LossInfo
    seen = []

    def toy_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 *, beta):
        seen.append({"beta": beta, "policy_requires_grad": policy_chosen_logps.requires_grad})
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
    # log 2 times the mean weight (the weights themselves are tested in test_losses / test_models); and the run
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
# Accumulation, resume, preemption, retention
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


@pytest.mark.parametrize("method", [["--method", "drdo", "--student_reward", "head"], ["--method", "dpo"]])
def test_stopped_and_resumed_run_equals_uninterrupted(cache, tmp_path, method):
    # checkpoint every 2 steps, stop after step 5 (the checkpoint is at step 4), resume: steps 5.. are replayed
    # from the checkpoint's optimizer/scheduler state and the step-indexed data order -> identical in fp32.
    # drdo: with its reward head; dpo: with its reference log-probs read from the cache on resume.
    args = [*method, "--epochs", "2", "--lr", "1e-3", "--save_every", "2", "--eval_every", "3"]
    run(tmp_path, *args, name="whole")
    run(tmp_path, *args, "--stop_after", "5", name="split")
    assert checkpoint.load_state(checkpoint.latest(str(tmp_path / "split")))["step"] == 4
    run(tmp_path, *args, "--resume", name="split")
    assert metrics(tmp_path, "split") == metrics(tmp_path, "whole")
    wa, wb = weights(tmp_path, "split"), weights(tmp_path, "whole")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if "head" in method:
        head = [torch.load(os.path.join(checkpoint.latest(str(tmp_path / n)), "reward_head.pt")) for n in ("split", "whole")]
        assert torch.equal(head[0]["weight"], head[1]["weight"])


def test_save_total_limit_keeps_the_newest_checkpoints(cache, tmp_path):
    run(tmp_path, "--method", "sft", "--epochs", "1", "--save_every", "1", "--save_total_limit", "2")
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(tmp_path / "run") if d.startswith("checkpoint-"))
    n = json.loads((tmp_path / "run" / "summary.json").read_text())["steps"]
    assert steps == [n - 1, n] and n >= 3


def trainer_subprocess(args, env_extra=None, code=None):
    """`python train.py ARGS` (or `python -c CODE ARGS`) on the tiny task in the test session's cache."""
    cmd = [sys.executable, "train.py"] if code is None else [sys.executable, "-c", code]
    return subprocess.Popen([*cmd, "--data", "embedded-tiny", "--no-final_check", *args], cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env_extra or {})))


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
    args = ["--method", "drdo", "--student_reward", "head", "--epochs", "40", "--lr", "1e-4", "--save_every", "1000",
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


# ------------------------------------------------------------------------------------------------------------
# The real command line, checkpoints usable elsewhere, the benchmark
# ------------------------------------------------------------------------------------------------------------
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


def test_logged_names_follow_the_hugging_face_trainers(cache, tmp_path):
    run(tmp_path, "--method", "dpo", "--epochs", "1", "--eval_every", "2")
    rows = metrics(tmp_path)
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen", "logits/chosen",
                "logits/rejected", "grad_norm", "learning_rate"):
        assert key in rows[0], key
    assert "eval_loss" in rows[1] and "eval_rewards/accuracies" in rows[1] and "eval_logits/chosen" in rows[1]
    assert not any(k.startswith("eval/") for row in rows for k in row)


def test_report_to_tensorboard_writes_the_logged_rows(cache, tmp_path):
    pytest.importorskip("tensorboard")       # optional: pip install tensorboard (not in requirements.txt)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run(tmp_path, "--method", "dpo", "--epochs", "1", "--report_to", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged == pytest.approx({row["step"]: row["loss"] for row in metrics(tmp_path)}, rel=1e-6)


@pytest.mark.parametrize("value, message", [("csv", "--report_to 'csv': choose from tensorboard, wandb"),
                                            ("wandb", "--report_to wandb needs its package: pip install wandb")])
def test_report_to_errors(cache, tmp_path, value, message):
    import importlib.util
    if value == "wandb" and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(SystemExit, match=message):
        run(tmp_path, "--method", "dpo", "--report_to", value)


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
    assert s["train_pairs"] == 36 and s["steps"] == math.ceil(s["train_examples"] / 8)
    assert "final_check" not in s                                         # no gold to check
