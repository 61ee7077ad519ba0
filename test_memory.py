"""Tests of the memory options of train.py on the embedded-tiny task: LoRA through peft (the adapter-free model as
pi_ref, only adapters and drdo's head train, exact resume, checkpoints that load back with peft, a merged model),
and gradient checkpointing (the same losses and gradients as without). The logits-only-at-completions path is
tested in test_models.py and test_logps.py. Seconds each.
"""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
import tokenization  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402
from train_test_helpers import metrics, run, weights  # noqa: E402


def test_adapters_off_is_the_base_model_and_adapters_on_is_not(tiny_task):
    # peft starts adapters as the identity (B = 0); after perturbing B the wrapped model differs, and with
    # disable_adapter() it is the base model again, to the last bit of the log-probs
    model, tok = models.load_model("embedded", tiny_task["reference"])
    examples, _ = tokenization.tokenize_dataset(tok, tiny_task["test"], 128, 64, log=lambda *_: None)
    batch = tokenization.collate(examples[:6], tok.pad_token_id)
    base = models.pair_logps(model, batch)["logps"]
    lora = models.add_lora(model, r=4)
    torch.testing.assert_close(models.pair_logps(lora, batch)["logps"], base)          # identity at init
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    moved = models.pair_logps(lora, batch)["logps"]
    assert (moved[0] - base[0]).abs().max() > 1e-3
    with lora.disable_adapter():
        torch.testing.assert_close(models.pair_logps(lora, batch)["logps"], base, atol=0, rtol=0)


def test_lora_dpo_starts_at_ln2_trains_only_adapters_and_takes_pi_ref_from_the_adapter_free_model(
        cache, tiny_task, tmp_path, monkeypatch):
    loaded = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda name, *a, **k: loaded.append(name) or real_load(name, *a, **k))
    s = run(tmp_path, "--method", "dpo", "--lora_r", "8", "--epochs", "2", "--lr", "3e-3", "--max_length", "101")
    # one model in memory: the policy (the reference pass used it with adapters off; max_length 101 is a cache
    # key no other test uses, so the reference log-probs were computed here, not read from the cache)
    assert loaded == ["embedded"]
    assert metrics(tmp_path)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert s["objective_end"] < s["objective_start"] - 1e-3
    # the saved checkpoint holds adapters only; the base model's weights never moved
    ckpt = checkpoint.latest(str(tmp_path / "run"))
    assert os.path.exists(os.path.join(ckpt, "adapter_model.safetensors"))
    assert not os.path.exists(os.path.join(ckpt, "model.safetensors"))
    from safetensors.torch import load_file
    adapters = load_file(os.path.join(ckpt, "adapter_model.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)   # B moved away from 0


def test_lora_checkpoint_loads_back_with_peft_and_merged_equals_adapted(cache, tiny_task, tmp_path):
    run(tmp_path, "--method", "simpo", "--lora_r", "8", "--epochs", "1", "--lr", "3e-3", "--save_merged")
    ckpt = checkpoint.latest(str(tmp_path / "run"))
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    adapted = AutoPeftModelForCausalLM.from_pretrained(ckpt).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_task["reference"]).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    examples, _ = tokenization.tokenize_dataset(tok, tiny_task["test"], 128, 64, log=lambda *_: None)
    batch = tokenization.collate(examples[:8], tok.pad_token_id)
    a, m, b = (models.pair_logps(x, batch)["logps"][0] for x in (adapted, merged, base))
    torch.testing.assert_close(m, a, atol=1e-4, rtol=0)              # merging is the same function
    assert (a - b).abs().max() > 1e-3                                # and it is not the base model


@pytest.mark.parametrize("method", [["--method", "dpo"], ["--method", "drdo", "--student_reward", "head"]])
def test_lora_stopped_and_resumed_run_equals_uninterrupted(cache, tmp_path, method):
    args = [*method, "--lora_r", "8", "--epochs", "2", "--lr", "3e-3", "--save_every", "2"]
    run(tmp_path, *args, name="whole")
    run(tmp_path, *args, "--stop_after", "5", name="split")
    run(tmp_path, *args, "--resume", name="split")
    assert metrics(tmp_path, "split") == metrics(tmp_path, "whole")
    from safetensors.torch import load_file
    a, b = (load_file(os.path.join(checkpoint.latest(str(tmp_path / n)), "adapter_model.safetensors"))
            for n in ("split", "whole"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    if "head" in method:                                             # drdo's head trains beside the adapters
        heads = [torch.load(os.path.join(checkpoint.latest(str(tmp_path / n)), "reward_head.pt")) for n in ("split", "whole")]
        assert torch.equal(heads[0]["weight"], heads[1]["weight"]) and heads[0]["weight"].abs().max() > 0


@pytest.mark.parametrize("lora", [[], ["--lora_r", "8"]])
def test_gradient_checkpointing_gives_the_same_losses_and_gradients(cache, tmp_path, lora):
    # recomputing activations in backward changes memory, not arithmetic: 4 steps with and without agree on
    # every logged loss and gradient norm to 1e-5, and on the final weights
    args = ["--method", "dpo", *lora, "--epochs", "1", "--lr", "3e-3", "--eval_every", "2"]
    run(tmp_path, *args, name="plain")
    run(tmp_path, *args, "--gradient_checkpointing", name="ckpt")
    a, b = metrics(tmp_path, "plain"), metrics(tmp_path, "ckpt")
    assert len(a) == len(b) >= 4
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "rewards/margins"):
            assert y[key] == pytest.approx(x[key], abs=1e-5, rel=1e-5), (key, x[key], y[key])
    if not lora:
        wa, wb = weights(tmp_path, "plain"), weights(tmp_path, "ckpt")
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_lora_options_without_lora_are_a_clear_error(cache, tmp_path):
    with pytest.raises(SystemExit, match="apply to LoRA training; add --lora_r"):
        run(tmp_path, "--method", "dpo", "--save_merged")
