"""curriculum.py (Curry-DPO) on the embedded-tiny task: three stages of one train.py run each, every stage starting
from the previous stage's final weights, which are also its reference (so every stage starts at DPO's ln 2), the
pairs of stage k being the best against the k-th worst sample; a finished curriculum is not trained again.
"""
import json
import math
import os

import pytest
import torch

import checkpoint
import curriculum
from train_test_helpers import metrics


def test_three_stages_each_from_the_last_with_it_as_reference(cache, tiny_task, tmp_path):
    out = tmp_path / "curry"
    args = ["--method", "dpo", "--data", "embedded-tiny", "--epochs", "1", "--lr", "1e-3", "--no-final_check",
            "--eval_every", "0", "--out", str(out)]
    summaries = curriculum.main(args)
    assert [os.path.basename(os.path.dirname(s["checkpoint"])) for s in summaries] == ["stage-1", "stage-2", "stage-3"]
    from safetensors.torch import load_file
    for k in (1, 2, 3):
        config = json.loads((out / f"stage-{k}" / "config.json").read_text())
        assert config["curriculum_stage"] == k and config["lr"] == 1e-3
        previous = summaries[k - 2]["checkpoint"] if k > 1 else "embedded"
        assert config["model"] == config["ref_model"] or k == 1
        assert config["model"] == previous
        # policy = reference at each stage's first step: the loss is ln 2 there
        assert metrics(out, f"stage-{k}")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # stage 2 started from stage 1's final weights (loaded, not re-initialised)
    w1 = load_file(os.path.join(summaries[0]["checkpoint"], "model.safetensors"))
    assert all(torch.equal(w1[k], v) for k, v in
               load_file(os.path.join(checkpoint.complete(str(out / "stage-1"))[-1], "model.safetensors")).items())
    # a second call finds every stage done and trains nothing
    logs = []
    again = curriculum.run_curriculum(curriculum.resolve(curriculum.parse_config(curriculum.Config, args)),
                                      log=logs.append)
    assert [s["checkpoint"] for s in again] == [s["checkpoint"] for s in summaries]
    assert sum("already done" in line for line in logs) == 3


def test_curriculum_needs_ranked_responses(tmp_path):
    with pytest.raises(SystemExit, match="only the embedded task keeps"):
        curriculum.main(["--method", "dpo", "--data", str(tmp_path / "pairs.jsonl")])
