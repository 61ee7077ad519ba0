"""Tests of train.py under torchrun (distributed.py): 2 processes on the CPU with the gloo backend, the embedded-tiny
task and the `tiny` model, each compared with one in-process run that accumulates the same global batch.

What is checked, each against a value derived here or a run made without torchrun:
 * DDP equals single-process accumulation for dpo (cached reference log-probs), drdo with its reward-head student on
   packed rows (the head is inside the DDP wrapper; each rank packs its own micro-batches) and edpo (the pessimistic
   member chosen on the global batch): every logged loss to 1e-6, gradient norms to 1e-5 relative, every other logged
   value, and the final weights; the last window of each run is short (1 pair), so one rank runs a padding micro-batch
   that must count 0;
 * a SIGTERM to ONE rank stops both after the same step, rank 0 alone writes the checkpoint, and torchrun
   --resume reproduces the uninterrupted torchrun run bit for bit;
 * before the loop nothing is computed whole by each rank: with an empty cache, rank 0 alone trains the Oracle
   ensemble and scores the pairs, and the reference log-probs are split between the ranks (counted per rank);
 * every worker has freed its DDP/FSDP wrapper when it destroys the process group, after a normal end and after
   a SIGTERM (distributed.teardown: otherwise gloo's teardown at interpreter exit sometimes aborts the worker);
 * FSDP2 (fully_shard) runs on gloo/CPU: stopped and resumed under --fsdp, it equals the single-process run;
   its checkpoints are plain Hugging Face checkpoints with the same tensors;
 * one process: e-DPO's member is the argmin over the whole optimizer batch (recomputed here), whatever the
   micro-batch split; bad combinations give one clear error; `Dist.share` on hand-written cases.
Six torchrun runs of ~15-20 s each (3 Python processes, mostly importing transformers): 2 min 45 s measured with
another job on one of the two cores (~170 CPU-seconds in all).
"""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
import distributed  # noqa: E402
from losses import LOSSES  # noqa: E402
from train_test_helpers import HERE, metrics, run, weights  # noqa: E402

# train.py wrapped so a test can see inside each rank: counts of the work done before the loop (Oracle members
# trained, pairs scored by the Oracle, pairs given to pi_ref, and how many DDP/FSDP wrappers were still alive
# when the process group was destroyed) written to <out>/work-rank<r>.json at exit, and, when SIGTERM_RANK is
# set, that rank sends itself SIGTERM during its SIGTERM_AT-th training micro-batch.
LAUNCHER = """
import atexit, json, os, signal, sys
sys.path.insert(0, {here!r})
import weakref
import distributed, oracle, reference, train
rank, out = int(os.environ["RANK"]), sys.argv[sys.argv.index("--out") + 1]
work = {{"oracle_members": 0, "oracle_pairs": 0, "reference_pairs": 0, "wrappers_alive_at_teardown": None}}
wrapped, real_wrap, real_destroy = [], distributed.Dist.wrap, distributed.dist.destroy_process_group
def wrap(self, model):
    model = real_wrap(self, model)
    wrapped.append(weakref.ref(model))
    return model
def destroy_process_group(*a, **k):
    work["wrappers_alive_at_teardown"] = sum(w() is not None for w in wrapped)
    return real_destroy(*a, **k)
distributed.Dist.wrap, distributed.dist.destroy_process_group = wrap, destroy_process_group
real_train, real_score, real_logps, real_loss = oracle.train_oracle, oracle.score_examples, reference.pair_logps, train.compute_loss
def train_oracle(*a, **k):
    work["oracle_members"] += 1
    return real_train(*a, **k)
def score_examples(model, examples, *a, **k):
    work["oracle_pairs"] += len(examples)
    return real_score(model, examples, *a, **k)
def pair_logps(model, batch, *a, **k):
    work["reference_pairs"] += batch["input_ids"].shape[0] // 2
    return real_logps(model, batch, *a, **k)
calls = [0]
def compute_loss(cfg, model, batch, keywords=None):
    calls[0] += model.training and __import__("torch").is_grad_enabled()
    if rank == int(os.environ.get("SIGTERM_RANK", -1)) and calls[0] == int(os.environ["SIGTERM_AT"]):
        os.kill(os.getpid(), signal.SIGTERM)
    return real_loss(cfg, model, batch, keywords)
oracle.train_oracle, oracle.score_examples, reference.pair_logps, train.compute_loss = train_oracle, score_examples, pair_logps, compute_loss
atexit.register(lambda: json.dump(work, open(os.path.join(out, f"work-rank{{rank}}.json"), "w")))
train.main(sys.argv[1:])
"""


def torchrun(tmp_path, *args, name="ddp", cache_dir=None, env=None):
    """`torchrun --standalone --nproc_per_node 2 train.py ARGS` (through LAUNCHER) -> the finished process."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER.format(here=HERE))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
           "--data", "embedded-tiny", "--no-final_check", "--eval_every", "0", "--out", str(tmp_path / name), *args]
    environment = dict(os.environ, OMP_NUM_THREADS="1", DRDO_CACHE=cache_dir or os.environ["DRDO_CACHE"], **(env or {}))
    return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, env=environment, timeout=300)


def said(r):
    """A torchrun run's output for an assertion message: the workers' last printed lines, then stderr up to the
    launcher's own traceback (a worker's error or abort message is there, above torchrun's summary of it)."""
    err = r.stderr.split('Traceback (most recent call last):\n  File "<frozen runpy>"')[0]
    return f"stdout:\n{r.stdout[-1500:]}\nstderr:\n{err[-2500:]}\n[...]\n{r.stderr[-1000:]}"


def work(tmp_path, name):
    return [json.loads((tmp_path / name / f"work-rank{r}.json").read_text()) for r in (0, 1)]


def assert_same_run(a, b, tmp_path, skip=()):
    """Two runs' logged rows and final weights agree: losses to 1e-6, gradient norms to 1e-5 relative (DDP sums
    the two ranks' gradients in another order), everything else to its float32 resolution (log-prob sums near
    -150 have an ulp of 1.5e-5, and rewards/margins are beta times differences of them: 1e-5 absolute);
    weights as test_train's accumulation test (Adam's 1/sqrt(v) magnifies ~1e-7 differences of near-zero
    gradients)."""
    rows_a, rows_b = metrics(tmp_path, a), metrics(tmp_path, b)
    assert len(rows_a) == len(rows_b) == 5
    for x, y in zip(rows_a, rows_b):
        assert set(x) - set(skip) == set(y) - set(skip), set(x) ^ set(y)
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6), (x["step"], x["loss"], y["loss"])
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5), (x["step"], x["grad_norm"], y["grad_norm"])
        for k in set(x) - set(skip):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-5), (x["step"], k, x[k], y[k])
    wa, wb = weights(tmp_path, a), weights(tmp_path, b)
    assert set(wa) == set(wb) and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-5


# 5 steps of 4 pairs: epochs 0.52 of the tiny task's 33 pairs = 17 pairs, so steps 1-4 have 2 micro-batches of 1
# pair per rank and step 5 has 1 pair: rank 0 takes it, rank 1 runs a padding micro-batch that must count 0
STEPS = ["--model", "tiny", "--batch_size", "4", "--micro_batch_size", "1", "--epochs", "0.52", "--lr", "1e-3"]


def test_the_step_plan_is_five_steps_with_a_short_last_one(cache, tiny_task):
    import train
    from transformers import AutoTokenizer

    import tokenization
    n = len(tokenization.tokenize_dataset(AutoTokenizer.from_pretrained(tiny_task["reference"]), tiny_task["train"], 128, 64,
                                  log=lambda *_: None)[0])
    cfg = train.resolve(train.Config(method="dpo", data="embedded-tiny", batch_size=4, micro_batch_size=1, epochs=0.52))
    assert [sum(map(len, w)) for w in train.windows(n, cfg)] == [4, 4, 4, 4, 1]


# ------------------------------------------------------------------------------------------------------------
# DDP = one process accumulating the same global batch
# ------------------------------------------------------------------------------------------------------------
def test_ddp_dpo_equals_accumulation_and_a_sigterm_to_one_rank_resumes_exactly(cache, tmp_path):
    args = ["--method", "dpo", *STEPS, "--save_every", "2", "--eval_every", "2"]
    run(tmp_path, *args, name="single")
    r = torchrun(tmp_path, *args, name="ddp")
    assert r.returncode == 0, said(r)
    assert_same_run("single", "ddp", tmp_path)
    # the DDP wrapper (in a reference cycle) is freed before the process group goes: left to interpreter
    # shutdown, gloo's teardown there sometimes aborts a finished worker (distributed.teardown)
    assert [w["wrappers_alive_at_teardown"] for w in work(tmp_path, "ddp")] == [0, 0]
    # rank 1 alone gets SIGTERM in its 3rd micro-batch (step 2): both ranks finish step 2, rank 0 saves
    # checkpoint-2 and prints the torchrun command that resumes; each worker exits 128 + 15
    r = torchrun(tmp_path, *args, name="term", env={"SIGTERM_RANK": "1", "SIGTERM_AT": "3"})
    assert r.returncode != 0 and "exitcode  : 143" in r.stderr, said(r)
    assert [os.path.basename(c) for c in checkpoint.complete(str(tmp_path / "term"))] == ["checkpoint-2"]
    assert [w["wrappers_alive_at_teardown"] for w in work(tmp_path, "term")] == [0, 0]   # also when stopped
    assert len(metrics(tmp_path, "term")) == 2
    command = r.stdout.split("Resume with:\n")[1].splitlines()[0].strip()
    assert command.startswith("torchrun --standalone --nproc_per_node 2 train.py ") and command.endswith("--resume")
    r = torchrun(tmp_path, *args, "--resume", name="term")
    assert r.returncode == 0, said(r)
    assert metrics(tmp_path, "term") == metrics(tmp_path, "ddp")                 # bit for bit
    wa, wb = weights(tmp_path, "term"), weights(tmp_path, "ddp")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ddp_drdo_with_its_reward_head_and_packed_rows_equals_accumulation(cache, tmp_path):
    # the head student is a submodule of the wrapped policy: its gradient is all-reduced with the rest, and
    # the per-term gradient norms (rank 0's replica, evaluation steps) are logged as in one process. With
    # --packing both, each rank packs its own micro-batches (a pair's prompt once, no padding), the head read at
    # each response's last token of the packed row; the run equals one process accumulating the same packed
    # micro-batches (one torchrun launch for both properties: each costs ~15 s of imports)
    args = ["--method", "drdo", "--student_reward", "head", *STEPS, "--packing", "both", "--eval_every", "2"]
    run(tmp_path, *args, name="single")
    r = torchrun(tmp_path, *args, name="ddp")
    assert r.returncode == 0, said(r)
    assert "packing both" in r.stdout
    assert_same_run("single", "ddp", tmp_path)
    assert "grad_norm/distill" in metrics(tmp_path, "ddp")[1]
    heads = [torch.load(os.path.join(checkpoint.latest(str(tmp_path / n)), "reward_head.pt")) for n in ("single", "ddp")]
    assert heads[0]["weight"].abs().max() > 0
    torch.testing.assert_close(heads[1]["weight"], heads[0]["weight"], atol=1e-6, rtol=0)


def test_ddp_edpo_chooses_the_member_on_the_global_batch_and_builds_everything_once(cache, tmp_path):
    # an empty cache but for the embedded task: under torchrun, rank 0 alone trains the 3 Oracle members and
    # scores the pairs while rank 1 waits, then reads them; pi_ref's log-probs are computed half by each rank
    # and gathered. The single-process run (the session cache) builds its own; equal losses then say the
    # Oracle, its scores and the gathered reference log-probs are the same numbers.
    fresh = tmp_path / "cache"
    fresh.mkdir()
    for d in os.listdir(cache):
        if d.startswith("embedded-") and os.path.isdir(os.path.join(cache, d)):
            shutil.copytree(os.path.join(cache, d), fresh / d)
    args = ["--method", "edpo", *STEPS, "--oracle_epochs", "2"]
    run(tmp_path, *args, name="single")
    r = torchrun(tmp_path, *args, name="ddp", cache_dir=str(fresh))
    assert r.returncode == 0, said(r)
    assert_same_run("single", "ddp", tmp_path)
    # the member chosen at each step (logged as edpo/member, the same for every pair of the step) is the same
    members = [row["edpo/member"] for row in metrics(tmp_path, "ddp")]
    assert members == [row["edpo/member"] for row in metrics(tmp_path, "single")]
    assert all(m in (0.0, 1.0, 2.0) for m in members)
    rank0, rank1 = work(tmp_path, "ddp")
    pairs = json.loads((tmp_path / "single" / "summary.json").read_text())["train_examples"]
    assert rank0["oracle_members"] == 3 and rank1["oracle_members"] == 0
    assert rank0["oracle_pairs"] > 0 and rank1["oracle_pairs"] == 0
    # train (33) + held-out (20) pairs in batches of 32: rank 0 takes batches 0 (train) and 0 (held-out), rank 1
    # batch 1 (train), each computed once
    assert rank0["reference_pairs"] == 32 + 20 and rank1["reference_pairs"] == pairs - 32


# ------------------------------------------------------------------------------------------------------------
# FSDP2 on gloo / CPU
# ------------------------------------------------------------------------------------------------------------
def test_fsdp_stopped_and_resumed_equals_accumulation(cache, tmp_path):
    # weights, gradients and AdamW state sharded over the 2 ranks; stop after step 3 (checkpoint-2: the full
    # weights and the optimizer state gathered to rank 0, in the single-process format), resume under --fsdp:
    # the whole run equals one process accumulating the same batches
    args = [*STEPS, "--method", "dpo", "--save_every", "2", "--eval_every", "2"]
    run(tmp_path, *args, name="single")
    r = torchrun(tmp_path, *args, "--fsdp", "--stop_after", "3", name="fsdp")
    assert r.returncode == 0, said(r)
    state = checkpoint.load_state(checkpoint.latest(str(tmp_path / "fsdp")))
    assert state["step"] == 2 and sorted(state["optimizer"]["state"]) == list(range(len(state["optimizer"]["state"])))
    r = torchrun(tmp_path, *args, "--fsdp", "--resume", name="fsdp")
    assert r.returncode == 0, said(r)
    assert [w["wrappers_alive_at_teardown"] for w in work(tmp_path, "fsdp")] == [0, 0]
    assert "resumed from" in r.stdout and "2 processes, FSDP" in r.stdout
    assert_same_run("single", "fsdp", tmp_path)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(checkpoint.latest(str(tmp_path / "fsdp")))
    assert type(model).__name__ == "OPTForCausalLM"


# ------------------------------------------------------------------------------------------------------------
# One process: e-DPO's member on the whole optimizer batch; errors; the split
# ------------------------------------------------------------------------------------------------------------
def test_edpo_member_is_the_argmin_over_the_whole_optimizer_batch(cache, tmp_path, monkeypatch):
    # micro-batches of 2 and one micro-batch of the whole window (4 pairs) give every training call of a step the
    # same member; recomputed here from the tensors the loss received: argmin_k sum over the step's 4 pairs of
    # (dR_k - beta h)^2, beta = 0.1. (Before the registry's `window` entry, micro-batches of 2 each took their
    # own argmin: README deviation 11.)
    import losses
    chosen, differs = {}, 0
    for micro in (2, 4):
        calls = []

        def spy(*args, **kwargs):
            calls.append((args[0].requires_grad, kwargs.get("member"), [a.detach() for a in args]))
            return losses.edpo_loss(*args, **kwargs)
        monkeypatch.setitem(LOSSES, "edpo", replace(LOSSES["edpo"], fn=spy))
        run(tmp_path, "--method", "edpo", "--model", "tiny", "--batch_size", "4", "--micro_batch_size", str(micro),
            "--epochs", "1", "--lr", "3e-3", "--oracle_epochs", "2", name=f"micro{micro}")
        training = [(member, args) for grad, member, args in calls if grad]     # not the window pass, not evaluation
        per_step = 4 // micro
        steps = [training[i:i + per_step] for i in range(0, len(training), per_step)][:8]   # the 8 full windows
        assert len(steps) == 8 and all(len(s) == per_step for s in steps)
        chosen[micro] = []
        for step in steps:
            pc, pr, rc, rr, Rw, Rl = (torch.cat([args[j] for _, args in step], dim=-1) for j in range(6))
            h = (pc - rc) - (pr - rr)                                                       # (4,)
            per_pair = ((Rw - Rl) - 0.1 * h).double() ** 2                                  # (K, 4)
            k = per_pair.sum(1).argmin().item()                                             # over the window
            assert [member for member, _ in step] == [k] * per_step, (step, k)
            chosen[micro].append(k)
            differs += micro == 2 and any(per_pair[:, j:j + 2].sum(1).argmin().item() != k for j in (0, 2))
    assert chosen[2] == chosen[4]
    assert differs, "no step where a micro-batch's own argmin differs from the window's: the test shows nothing"


def test_batch_size_must_split_into_whole_micro_batches_per_process(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")         # as torchrun --nproc_per_node 2 sets it (no process is started)
    with pytest.raises(SystemExit, match=r"--batch_size 6 must be a positive multiple of --micro_batch_size 2 x 2 "
                                         r"processes = 4"):
        run(tmp_path, "--method", "dpo", "--batch_size", "6", "--micro_batch_size", "2")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit, match="--fsdp shards the model over several processes; launch with torchrun"):
        run(tmp_path, "--method", "dpo", "--fsdp")


def test_share_strides_and_pads():
    # 5 micro-batches over 2 ranks: rank 0 takes 0, 2, 4; rank 1 takes 1, 3 and, padded, a copy of item 0 that
    # counts for nothing (3 entries each, as DDP and FSDP need)
    items = ["a", "b", "c", "d", "e"]
    r0, r1 = distributed.Dist(rank=0, world=2), distributed.Dist(rank=1, world=2)
    assert r0.share(items) == [("a", True), ("c", True), ("e", True)]
    assert r1.share(items) == [("b", True), ("d", True), ("a", False)]
    assert r1.share(items, pad=False) == [("b", True), ("d", True)]
    assert distributed.Dist(rank=1, world=2).share(["a"]) == [("a", False)]
    assert distributed.Dist().share(items) == [(x, True) for x in items]
