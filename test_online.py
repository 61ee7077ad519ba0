"""online.py on the embedded-tiny task: the rounds' references (round t+1 reads pi_t's log-probs, recomputed here),
caches keyed on weights, K samples labelled by the annotator (recomputed), the pairs each method asks for (by hand),
an interrupted run resumed equal to the uninterrupted one, every method end to end, and bad input refused before
anything is written.
"""
import json
import math
import os

import pytest
import torch

import online
import train
from embedded import gold_reward
from models import load_model, pair_logps, save_model
from train_test_helpers import metrics

FAST = ["--data", "embedded-tiny", "--epochs", "1", "--lr", "1e-3", "--eval_every", "0", "--oracle_epochs", "1",
        "--eval_prompts", "8", "--eval_samples", "2"]


def run(tmp_path, name, *args):
    return online.main([*FAST, "--out", str(tmp_path / name), *args])


def spy_batches(monkeypatch):
    """Every (cfg, batch) train.py computes a loss on, in order (the reference / anchor log-probs ride in the batch)."""
    seen = []
    real = train.compute_loss

    def wrapped(cfg, model, batch, keywords=None):
        seen.append((cfg, {k: v.detach().clone() for k, v in batch.items()}))
        return real(cfg, model, batch, keywords)
    monkeypatch.setattr(train, "compute_loss", wrapped)
    return seen


@torch.no_grad()
def logps_of(path, batch):
    model = load_model(path)[0].eval()
    out = pair_logps(model, {k: batch[k] for k in ("input_ids", "attention_mask", "loss_mask")})["logps"]
    return out[0].double(), out[1].double()


# ------------------------------------------------------------------------------------------------------------
# References: the cached log-probs of round t+1 are pi_t's (and pi_ref's), recomputed here from the checkpoints
# ------------------------------------------------------------------------------------------------------------
def test_each_round_reads_the_log_probs_of_its_own_references(cache, tmp_path, monkeypatch):
    seen = spy_batches(monkeypatch)
    result = run(tmp_path, "inpo", "--method", "inpo", "--rounds", "2", "--nash_eta", "0.5")
    r1, r2 = result["rounds"]
    firsts = [next(b for c, b in seen if c.out == os.path.join(str(tmp_path / "inpo"), f"round-{t}", "train"))
              for t in (1, 2)]
    start = r1["start"]                                    # pi_1: the task's pi_ref; pi_2: round 1's last checkpoint
    assert r2["start"] == r1["policy"] and r2["anchor_models"] == [r1["policy"]] and r1["anchor_models"] == [start]
    assert r1["ref_model"] == r2["ref_model"] == start     # INPO's pi_ref stays the original one
    for batch, anchor in zip(firsts, (start, r1["policy"])):
        a_w, a_l = logps_of(anchor, batch)                 # pi_t, recomputed from its checkpoint
        torch.testing.assert_close(batch["anchor_chosen"][0].double(), a_w, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch["anchor_rejected"][0].double(), a_l, rtol=0, atol=1e-6)
        r_w, r_l = logps_of(start, batch)                  # pi_ref
        torch.testing.assert_close(batch["ref_chosen"].double(), r_w, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch["ref_rejected"].double(), r_l, rtol=0, atol=1e-6)
    # round 2's anchor really moved: pi_1 != pi_ref on those pairs
    assert (firsts[1]["anchor_chosen"][0] - firsts[1]["ref_chosen"]).abs().max() > 1e-3


def test_iterative_dpo_starts_every_round_at_ln2_against_pi_t(cache, tmp_path):
    result = run(tmp_path, "dpo", "--method", "dpo", "--rounds", "2")
    for t, record in enumerate(result["rounds"], 1):
        assert record["ref_model"] == record["start"]                               # the reference is pi_t
        assert metrics(tmp_path / "dpo" / f"round-{t}", "train")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["rounds"][1]["start"] == result["rounds"][0]["policy"]


@pytest.mark.parametrize("role", ["ref_model", "anchor"])
def test_a_reference_cache_is_keyed_on_the_weights_not_the_path(cache, tmp_path, tiny_task, role):
    """The same pairs and the same directory name, new weights (what a round's iterate looks like to a careless
    cache): the log-probs are recomputed, and equal the new model's; as --ref_model and as an --anchor_models entry."""
    import tokenization
    from config import Config
    from reference import reference_logps
    a, tokenizer = load_model(tiny_task["reference"])
    where = str(tmp_path / "iterate")
    save_model(a, tokenizer, where)
    rows = [{"prompt": "I love", "chosen": " it so much", "rejected": " nothing"},
            {"prompt": "today", "chosen": " was great", "rejected": " was bad"}]
    ex = [tokenization.tokenize_pair(tokenizer, r)[0] for r in rows]
    cfg, kwargs, key = (Config(ref_model=where), {}, "ref_chosen") if role == "ref_model" else (
        Config(), {"model": where, "prefix": "anchor0"}, "anchor0_chosen")
    logs = []
    reference_logps(cfg, ex, "train", tokenizer, False, torch.device("cpu"), log=logs.append, **kwargs)
    first = [e[key] for e in ex]
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(a, tokenizer, where)                        # the same path, other weights
    reference_logps(cfg, ex, "train", tokenizer, False, torch.device("cpu"), log=logs.append, **kwargs)
    assert sum("computing once" in line for line in logs) == 2
    batch = tokenization.collate(ex, tokenizer.pad_token_id)
    new_w, _ = logps_of(where, batch)
    torch.testing.assert_close(torch.tensor([e[key] for e in ex], dtype=torch.float64), new_w, atol=1e-6, rtol=0)
    assert max(abs(x - y) for x, y in zip(first, [e[key] for e in ex])) > 1e-3


# ------------------------------------------------------------------------------------------------------------
# Sampling and labelling
# ------------------------------------------------------------------------------------------------------------
def test_k_samples_per_prompt_labelled_by_the_gold_annotator(cache, tmp_path, monkeypatch, tiny_task):
    calls = []
    real = online.sample_completions

    def spy(model, tokenizer, prompts, n, *args, **kwargs):
        calls.append((len(prompts), n, kwargs.get("desc", "")))
        return real(model, tokenizer, prompts, n, *args, **kwargs)
    monkeypatch.setattr(online, "sample_completions", spy)
    run(tmp_path, "gold", "--method", "sppo", "--rounds", "1", "--samples", "3", "--annotator", "gold",
        "--sppo_eta", "10")
    n_prompts = len(online.distinct_prompts(tiny_task["train"]))
    assert (n_prompts, 3) in [(p, n) for p, n, d in calls if d.startswith("sampling")]
    rows = [json.loads(line) for line in open(tmp_path / "gold" / "round-1" / "pairs.jsonl")]
    assert rows and all(r["chosen_score"] > r["rejected_score"] for r in rows)
    for r in rows:                                         # the gold reward of the text, recomputed
        assert gold_reward([r["chosen"], r["rejected"]]) == pytest.approx([r["chosen_score"], r["rejected_score"]], abs=1e-12)
        # best and worst of 3: the best beats both others, so its win rate is above 1/2 and the worst's below
        assert r["chosen_win_rate"] > 0.5 > r["rejected_win_rate"]


def test_a_sequence_classification_annotator_labels_as_the_oracle_it_exports(cache, tmp_path):
    """The Oracle's AutoModelForSequenceClassification export (judges.py's reward-model path) as the annotator: the
    same samples get the Oracle's rewards, so the round's pairs are the Oracle-annotated run's."""
    by_oracle = run(tmp_path, "oracle", "--method", "dpo", "--rounds", "1", "--eval_prompts", "0")
    member = os.path.join(by_oracle["oracle_dir"], "member-0", "seqcls")
    run(tmp_path, "seqcls", "--method", "dpo", "--rounds", "1", "--eval_prompts", "0", "--annotator", member)
    a = [json.loads(line) for line in open(tmp_path / "oracle" / "round-1" / "pairs.jsonl")]
    b = [json.loads(line) for line in open(tmp_path / "seqcls" / "round-1" / "pairs.jsonl")]
    assert [(x["chosen"], x["rejected"]) for x in a] == [(x["chosen"], x["rejected"]) for x in b]
    for x, y in zip(a, b):
        assert y["chosen_score"] == pytest.approx(x["chosen_score"], abs=1e-4)
        assert y["rejected_score"] == pytest.approx(x["rejected_score"], abs=1e-4)


def test_pairs_each_method_asks_for_by_hand():
    texts = [["a", "b", "c"], ["x", "x", "y"]]
    rewards = [[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]]
    # best vs worst: "b" (3) over "a" (1); prompt 2 ties everywhere: no pair
    rows = online.build_pairs(["p", "q"], texts, rewards, "best_worst")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("b", "a")]
    s = lambda d: 1 / (1 + math.exp(-d))                                      # noqa: E731
    # SPPO's win rates, by hand: P_hat(b) = (s(2) + 1/2 + s(1)) / 3, P_hat(a) = (1/2 + s(-2) + s(-1)) / 3
    assert rows[0]["chosen_win_rate"] == pytest.approx((s(2) + 0.5 + s(1)) / 3, abs=1e-12)
    assert rows[0]["rejected_win_rate"] == pytest.approx((0.5 + s(-2) + s(-1)) / 3, abs=1e-12)
    assert rows[0]["chosen_score"] == 3.0 and rows[0]["rejected_score"] == 1.0
    # DNO's margin filter: every sample at least `margin` below the best
    assert [(r["chosen"], r["rejected"]) for r in online.build_pairs(["p"], texts[:1], rewards[:1], "margin", 1.0)] \
        == [("b", "c"), ("b", "a")]
    assert [(r["chosen"], r["rejected"]) for r in online.build_pairs(["p"], texts[:1], rewards[:1], "margin", 1.5)] \
        == [("b", "a")]
    # as drawn (EGPO): samples 0 and 1, the higher first; equal texts are never a pair
    assert [(r["chosen"], r["rejected"]) for r in online.build_pairs(["p", "q"], texts, rewards, "as_drawn")] \
        == [("b", "a")]


def test_round_prompts_rotate_in_blocks():
    cfg = online.OnlineConfig(prompts_per_round=3)
    prompts = list("abcdefg")
    assert [online.round_prompts(prompts, cfg, t) for t in (1, 2, 3)] == [list("abc"), list("def"), list("gab")]
    assert online.round_prompts(prompts, online.OnlineConfig(), 5) == prompts


def test_references_of_each_method():
    h = ["p1", "p2", "p3"]
    ref = lambda m, k=2: online.references(h, "pi_ref", online.METHODS[m], k)   # noqa: E731
    assert ref("dpo") == ("p3", []) and ref("sppo") == ("p3", [])
    assert ref("inpo") == ("pi_ref", ["p3"])
    assert ref("mnpo") == ("pi_ref", ["p3", "p2"]) and ref("mnpo", 5) == ("pi_ref", ["p3", "p2", "p1"])
    assert ref("apo") == ("p3", ["p2"]) and online.references(["p1"], "r", online.METHODS["apo"], 2) == ("p1", ["p1"])
    assert ref("egpo") == ("pi_ref", [])


# ------------------------------------------------------------------------------------------------------------
# Resume: a run stopped mid-round, run again, ends where the uninterrupted one does
# ------------------------------------------------------------------------------------------------------------
def test_stopped_mid_round_and_resumed_equals_uninterrupted(cache, tmp_path):
    from safetensors.torch import load_file
    args = ["--method", "sppo", "--rounds", "2", "--sppo_eta", "10", "--save_every", "1", "--batch_size", "4",
            "--micro_batch_size", "4"]
    full = run(tmp_path, "full", *args)
    stopped = run(tmp_path, "cut", *args, "--stop_after", "3")
    assert stopped == {"stopped_at": [1, 3]}
    assert not (tmp_path / "cut" / "round-1" / "summary.json").exists()
    resumed = run(tmp_path, "cut", *args)
    for a, b in zip(full["rounds"], resumed["rounds"]):
        wa = load_file(os.path.join(a["policy"], "model.safetensors"))
        wb = load_file(os.path.join(b["policy"], "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert a["pairs"] == b["pairs"] and a["kl"] == b["kl"] and a["gold_gain"] == b["gold_gain"]


# ------------------------------------------------------------------------------------------------------------
# Every method, end to end: two rounds, each lowering its own objective
# ------------------------------------------------------------------------------------------------------------
# the squared losses overshoot their targets at FAST's lr 1e-3 in 4 steps; 3e-4 lowers them
STRENGTHS = {"sppo": ["--sppo_eta", "10"], "inpo": ["--nash_eta", "0.5", "--lr", "3e-4"],
             "mnpo": ["--nash_eta", "0.5", "--lr", "3e-4"], "nash_mp": ["--nash_eta", "0.5", "--lr", "3e-4"],
             "egpo": ["--beta", "0.02", "--lr", "3e-4"]}


@pytest.mark.parametrize("method", sorted(online.METHODS))
def test_every_method_runs_rounds_and_lowers_its_objective(cache, tmp_path, method):
    # the gold annotator (rewards spread over [-1, 1]) for all but DRDO, whose teacher is the Oracle: the tiny
    # task's Oracle gives every sample nearly the same reward, so the regression losses (SPPO, INPO, ...) would
    # start at their optimum (win rates ~ 1/2) and have nothing to lower. Two rounds where the history matters
    # (MNPO's opponents, APO's pi_{t-1}), one elsewhere (the suite's time)
    annotator = "oracle" if method == "drdo" else "gold"
    rounds = 2 if online.METHODS[method].anchors in ("history", "previous") else 1
    result = run(tmp_path, method, "--method", method, "--rounds", str(rounds), "--annotator", annotator,
                 *STRENGTHS.get(method, []))
    assert [r["round"] for r in result["rounds"]] == list(range(1, rounds + 1))
    for r in result["rounds"]:
        assert r["train_loss_end"] < r["train_loss_start"], (method, r)
        assert r["kl"] >= -0.5 and math.isfinite(r["gold_gain"]) and math.isfinite(r["annotator_gain"])
    last = result["rounds"][-1]
    config = json.loads((tmp_path / method / f"round-{rounds}" / "train" / "config.json").read_text())
    assert config["method"] == online.METHODS[method].loss and config["model"] == last["start"]
    if rounds == 2:          # round 2's anchors: MNPO plays (pi_2, pi_1), APO extrapolates from pi_1 towards pi_2
        first = result["rounds"][0]["start"]
        expected = [last["start"], first] if method == "mnpo" else [first]
        assert config["anchor_models"].split(",") == expected
        assert config["ref_model"] == (last["start"] if method == "apo" else first)
    if online.METHODS[method].extragradient:              # a half round, then the full one FROM pi_t
        half = json.loads((tmp_path / method / f"round-{rounds}" / "half" / "train" / "config.json").read_text())
        assert half["model"] == config["model"] == last["start"]
        assert last["opponent"].startswith(str(tmp_path / method / f"round-{rounds}" / "half"))


def test_per_step_online_mode_is_one_step_per_round_on_new_prompts(cache, tmp_path):
    result = run(tmp_path, "perstep", "--method", "dpo", "--rounds", "3", "--prompts_per_round", "9",
                 "--batch_size", "8", "--micro_batch_size", "8", "--eval_prompts", "0")
    prompts = []
    for t in (1, 2, 3):
        assert len(metrics(tmp_path / "perstep" / f"round-{t}", "train")) == 1
        prompts.append({json.loads(line)["prompt"] for line in open(tmp_path / "perstep" / f"round-{t}" / "pairs.jsonl")})
    assert not prompts[0] & prompts[1] and not prompts[1] & prompts[2]
    assert "kl" not in result["rounds"][0]


# ------------------------------------------------------------------------------------------------------------
# Bad input: one clear error, nothing written
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--samples", "1"], r"--samples must be in \[2, inf\)"),
    (["--rounds", "0"], r"--rounds must be in \[1, inf\)"),
    (["--annotator", "no_such_reward_model"], "not oracle, gold, a directory, or a hub id"),
    (["--annotator", "gold", "--data", "pairs.jsonl"], "only the embedded task has"),
    (["--method", "simpo"], "not an online method"),
    (["--method", "drdo", "--annotator", "gold"], "online DRDO distils the Oracle"),
    (["--oracle_dir", "nowhere"], "--oracle_dir nowhere: no such directory"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    argv = ["--data", "embedded-tiny", "--out", str(out)] + args
    with pytest.raises(SystemExit, match=message):
        online.main(argv)
    assert not out.exists()


def test_offline_methods_refuse_missing_online_inputs(cache, tmp_path):
    from train_test_helpers import run as train_run
    with pytest.raises(SystemExit, match="give --anchor_models"):
        train_run(tmp_path, "--method", "inpo")
    with pytest.raises(SystemExit, match="run it with online.py --method sppo"):
        train_run(tmp_path, "--method", "sppo")


# ------------------------------------------------------------------------------------------------------------
# torchrun: each rank samples and labels its share of the prompts; the training of each round is DDP
# ------------------------------------------------------------------------------------------------------------
def test_torchrun_rounds_share_the_sampling_and_train_with_ddp(cache, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "online.py", *FAST,
           "--method", "dpo", "--rounds", "2", "--annotator", "gold", "--batch_size", "8", "--micro_batch_size", "4",
           "--out", str(out)]
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(cmd, cwd=here, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads((out / "online.json").read_text())
    n = len(online.distinct_prompts(__import__("embedded").embedded_task(
        __import__("embedded").EMBEDDED_PRESETS["embedded-tiny"], log=lambda *_: None)["train"]))
    for t, record in enumerate(result["rounds"], 1):
        stats = json.loads((out / f"round-{t}" / "round.json").read_text())
        assert stats["prompts_per_rank"] == [(n + 1) // 2, n // 2] and stats["prompts"] == n
        summary = json.loads((out / f"round-{t}" / "train" / "summary.json").read_text())
        assert summary["processes"] == 2 and record["processes"] == 2
        rows = [json.loads(line) for line in open(out / f"round-{t}" / "pairs.jsonl")]
        assert all(gold_reward([x["chosen"]])[0] == x["chosen_score"] for x in rows)   # labelled, gathered
        assert metrics(out / f"round-{t}", "train")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["rounds"][1]["ref_model"] == result["rounds"][0]["policy"]


# ------------------------------------------------------------------------------------------------------------
# OFS-DPO (a stream of offline pairs; train.py): two LoRA modules at two learning rates, resumable
# ------------------------------------------------------------------------------------------------------------
def _adapters(path):
    from safetensors.torch import load_file
    return (load_file(os.path.join(path, "adapter_model.safetensors")),
            load_file(os.path.join(path, "slow", "adapter_model.safetensors")))


def test_ofs_dpo_trains_two_modules_at_two_learning_rates(cache, tmp_path):
    from train_test_helpers import run as train_run
    import checkpoint
    train_run(tmp_path, "--method", "ofs_dpo", "--lora_r", "4", "--lr", "1e-3", "--ofs_lr_ratio", "4", "--warmup", "0",
              "--epochs", "1", "--save_every", "1", "--save_total_limit", "10", name="ofs")
    assert metrics(tmp_path, "ofs")[0]["loss"] == pytest.approx(2 * math.log(2), abs=1e-6)   # both modules = base
    first = checkpoint.complete(str(tmp_path / "ofs"))[0]
    fast, slow = _adapters(first)
    # Adam's first step moves every LoRA B entry (zero at init) by lr * sign(gradient): lr for the fast module,
    # lr / 4 for the slow one
    fb = max(v.abs().max().item() for k, v in fast.items() if "lora_B" in k)
    sb = max(v.abs().max().item() for k, v in slow.items() if "lora_B" in k)
    assert fb == pytest.approx(1e-3, rel=1e-3) and sb == pytest.approx(1e-3 / 4, rel=1e-3)


def test_ofs_dpo_stopped_and_resumed_equals_uninterrupted(cache, tmp_path):
    from train_test_helpers import run as train_run
    import checkpoint
    args = ["--method", "ofs_dpo", "--lora_r", "4", "--lr", "1e-3", "--epochs", "1", "--save_every", "1"]
    train_run(tmp_path, *args, name="full")
    train_run(tmp_path, *args, "--stop_after", "2", name="cut")
    train_run(tmp_path, *args, "--resume", name="cut")
    a, b = (_adapters(checkpoint.latest(str(tmp_path / n))) for n in ("full", "cut"))
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    la = [m["loss"] for m in metrics(tmp_path, "full")]
    lb = [m["loss"] for m in metrics(tmp_path, "cut")]
    assert la == lb


def test_ofs_dpo_needs_lora(cache, tmp_path):
    from train_test_helpers import run as train_run
    with pytest.raises(SystemExit, match="two LoRA modules"):
        train_run(tmp_path, "--method", "ofs_dpo")
