"""Tests of models.py on a tiny random OPT (seconds): the reward head's last-token pooling under right and
left padding, save/load of a model with a head (and the clear error for a plain LM), models by name and their
offline errors, and pair_logps against sequence log-probs computed row by row."""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM  # noqa: E402

import models  # noqa: E402
from data import collate  # noqa: E402


def tiny_opt(seed=0):
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                    max_position_embeddings=32, word_embed_proj_dim=16, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    return models.add_reward_head(OPTForCausalLM(cfg).eval())


def pair_batch():
    examples = [{"prompt_ids": [2, 3], "chosen_ids": [4, 5, 1], "rejected_ids": [6, 1]},
                {"prompt_ids": [2], "chosen_ids": [4, 4, 1], "rejected_ids": [7, 8, 9, 1]}]
    return collate(examples, pad_token_id=0)


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0],     # right padded: last real token at 2
                         [1, 1, 1, 1, 1],     # full: 4
                         [0, 0, 1, 1, 1]])    # left padded: 4
    assert models.last_token_index(mask).tolist() == [2, 4, 4]


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    model = tiny_opt()
    torch.nn.init.normal_(model.reward_head.weight)            # a non-zero head, so rewards differ
    seqs = [[2, 5, 6, 7, 1], [2, 9, 1]]
    alone = torch.stack([models.forward_with_reward(model, torch.tensor([s]),
                                                    torch.ones(1, len(s), dtype=torch.long))[1][0] for s in seqs])
    right = torch.tensor([[2, 5, 6, 7, 1], [2, 9, 1, 0, 0]])
    left = torch.tensor([[2, 5, 6, 7, 1], [0, 0, 2, 9, 1]])
    _, r_right = models.forward_with_reward(model, right, (right != 0).long())
    _, r_left = models.forward_with_reward(model, left, (left != 0).long())
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_left, alone, atol=1e-5, rtol=1e-5)


def test_head_is_zero_initialised_and_fp32():
    model = tiny_opt()
    _, rewards = models.forward_with_reward(model, torch.tensor([[2, 5, 1]]), torch.ones(1, 3, dtype=torch.long))
    assert rewards.dtype == torch.float32 and rewards.tolist() == [0.0]


def test_head_rewards_stay_fp32_under_bf16_autocast():
    # under autocast nn.Linear computes in bf16; the head must not (its rewards are regression targets and
    # Bradley-Terry logits): forward_with_reward switches autocast off around it
    model = tiny_opt()
    torch.nn.init.normal_(model.reward_head.weight)
    batch = pair_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, rewards = models.forward_with_reward(model, batch["input_ids"], batch["attention_mask"])
    assert logits.dtype == torch.bfloat16 and rewards.dtype == torch.float32


def test_pair_logps_equals_row_by_row_log_softmax():
    # an independent computation: each row alone, log_softmax, the completion tokens' log-probs summed by hand
    model = tiny_opt()
    batch = pair_batch()
    out = models.pair_logps(model, batch)
    (c, r), head = out["logps"], out.get("head")
    assert head is None
    rows = [([2, 3], [4, 5, 1]), ([2], [4, 4, 1]), ([2, 3], [6, 1]), ([2], [7, 8, 9, 1])]   # chosen, then rejected
    expected = []
    for prompt, completion in rows:
        ids = torch.tensor([prompt + completion])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)      # (T, V)
        expected.append(sum(logp[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(completion)))
    torch.testing.assert_close(torch.cat([c, r]).double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    c_avg, r_avg = models.pair_logps(model, batch, average=True)["logps"]
    lengths = torch.tensor([3, 3, 2, 4], dtype=torch.float64)
    torch.testing.assert_close(torch.cat([c_avg, r_avg]).double(), torch.tensor(expected) / lengths,
                               atol=1e-5, rtol=0)


def test_pair_logps_with_wpo_adds_the_adjusted_mean_log_probs_row_by_row():
    # WPO's input: per completion token log p(y_t) - log sum_v p(v)^2, averaged over the completion, computed here
    # row by row from softmax probabilities; the first three outputs are unchanged and the fourth is detached
    model = tiny_opt()
    batch = pair_batch()
    out = models.pair_logps(model, batch, wpo=True)
    (c, r), (wc, wr) = out["logps"], out["wpo"]
    c0, r0 = models.pair_logps(model, batch)["logps"]
    assert "head" not in out and torch.equal(c, c0) and torch.equal(r, r0)
    assert not wc.requires_grad and not wr.requires_grad
    rows = [([2, 3], [4, 5, 1]), ([2], [4, 4, 1]), ([2, 3], [6, 1]), ([2], [7, 8, 9, 1])]
    expected = []
    for prompt, completion in rows:
        p = torch.softmax(model(input_ids=torch.tensor([prompt + completion])).logits[0].double(), -1)   # (T, V)
        terms = [math.log(p[len(prompt) - 1 + k, tok].item() / (p[len(prompt) - 1 + k] ** 2).sum().item())
                 for k, tok in enumerate(completion)]
        expected.append(sum(terms) / len(terms))
    torch.testing.assert_close(torch.cat([wc, wr]).double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_logits_only_at_completion_positions_give_the_same_logps_and_gradients():
    # forward(loss_mask=...) returns (M, V) logits, M = completion tokens; the log-probs and their gradients
    # with respect to every weight equal those from the full (N, T, V) logits
    model = tiny_opt()
    batch = pair_batch()
    assert models.packs_logits(type(model))
    packed = models.forward(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).logits
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    M = int(batch["loss_mask"][:, 1:].sum())
    assert packed.shape == (M, full.shape[-1]) and M == 3 + 3 + 2 + 4
    from losses import sequence_logps
    a = sequence_logps(packed, batch["input_ids"], batch["loss_mask"])
    b = sequence_logps(full, batch["input_ids"], batch["loss_mask"])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    ga = torch.autograd.grad(a.sum(), list(model.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.sum(), list(model.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        if x is not None or y is not None:
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_logits_mean_is_the_mean_logit_over_completion_tokens_and_vocabulary():
    # TRL's logits/chosen: for each row, the mean of the logits at the positions that predict its completion
    # tokens, over the whole vocabulary; recomputed here from the full logits, row by row
    model = tiny_opt()
    batch = pair_batch()
    (c, r) = models.pair_logps(model, batch, logits_mean=True)["logits_mean"]
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    rows = [([2, 3], [4, 5, 1]), ([2], [4, 4, 1]), ([2, 3], [6, 1]), ([2], [7, 8, 9, 1])]
    expected = [full[i, len(p) - 1:len(p) - 1 + len(y)].mean().item() for i, (p, y) in enumerate(rows)]
    torch.testing.assert_close(torch.cat([c, r]).double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_save_and_load_a_model_with_a_head(tmp_path):
    model = tiny_opt()
    torch.nn.init.normal_(model.reward_head.weight)
    batch = pair_batch()
    _, before = models.forward_with_reward(model, batch["input_ids"], batch["attention_mask"])
    models.save_model(model, None, str(tmp_path / "o"))
    from safetensors.torch import load_file
    assert not any(k.startswith("reward_head") for k in load_file(str(tmp_path / "o" / "model.safetensors")))
    reloaded = models.load_reward_model(str(tmp_path / "o"))
    _, after = models.forward_with_reward(reloaded, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(after, before)


def test_loading_a_plain_lm_as_a_reward_model_is_a_clear_error(tmp_path):
    tiny_opt().save_pretrained(tmp_path / "lm")
    with pytest.raises(FileNotFoundError, match="not an Oracle"):
        models.load_reward_model(str(tmp_path / "lm"))


def test_model_names_and_offline_errors(tiny_task):
    model, tok = models.load_model("embedded", tiny_task["reference"])
    assert model.config.dropout == 0.0 and tok.eos_token_id is not None
    with pytest.raises(ValueError, match="needs the embedded task"):
        models.load_model("tiny")
    with pytest.raises(ValueError, match="Without internet, use one of: embedded"):
        models.load_model("opt-125m")


def test_until_eos_keeps_the_first_eos():
    assert models.until_eos([5, 6, 1, 0, 0], eos=1) == [5, 6, 1]
    assert models.until_eos([5, 6, 7], eos=1) == [5, 6, 7]
