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
import oracle  # noqa: E402
from tokenization import collate  # noqa: E402


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
    packed = models.forward(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[0]
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


def test_until_eos_keeps_the_first_stop_token():
    assert models.until_eos([5, 6, 1, 0, 0], 1) == [5, 6, 1]
    assert models.until_eos([5, 6, 7], 1) == [5, 6, 7]
    assert models.until_eos([5, 2, 0, 2], [0, 2]) == [5, 2]             # EOS 0 or end-of-turn 2, whichever first


def always_says(token, vocab_size, seed=0):
    """A tiny Llama whose greedy next token is always `token`: attention and MLP outputs zeroed (the residual
    stream is the token embedding), every embedding e_1, so the normalised hidden state is +sqrt(d) e_1 and
    only the LM-head row of `token` reads it."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[token, 0] = 1.0
    return model


@pytest.mark.parametrize("make, expected", [
    ("smollm2_like", [2]),        # EOS = end-of-turn = pad = 2 (padding is banned from samples, EOS is not)
    ("qwen_base_like", [2]),      # EOS 0, end-of-turn 2: generation stops at the end-of-turn token
])
def test_sampling_stops_at_the_end_of_turn_token(make, expected):
    import test_tokenization
    tok = getattr(test_tokenization, make)()
    model = always_says(2, len(test_tokenization.CHATML_VOCAB))
    prompts = tokenization_prompts(tok)
    texts, ids = models.sample_completions(model, tok, prompts, n=1, temperature=0, max_new_tokens=4,
                                           return_ids=True)
    assert [c for _, comps in ids for c in comps] == [expected, expected]
    assert ids[0][0] == [1, 5, 3, 7, 2, 3, 1, 6, 3] and ids[1][0] == [7]       # prompt ids, unpadded
    assert texts == [[""], [""]]


def tokenization_prompts(tok):
    """A chat prompt and a plain one, as evaluate.py builds them (prompt ids of different lengths)."""
    import tokenization
    return tokenization.prompt_ids_for_sampling(tok, [[{"role": "user", "content": "q"}], "q"], 64)


# ------------------------------------------------------------------------------------------------------------
# The reward model as a sequence-classification checkpoint
# ------------------------------------------------------------------------------------------------------------
def tiny_llama(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    return models.add_reward_head(LlamaForCausalLM(cfg).eval())


def opt_with_projection(vocab_size, seed=0):
    """An OPT whose LM head reads a 8-wide projection of its 16-wide hidden state (as opt-350m: 512 of 1024)."""
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=vocab_size, hidden_size=16, word_embed_proj_dim=8, num_hidden_layers=2, ffn_dim=32,
                    num_attention_heads=2, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, pad_token_id=0, bos_token_id=14, eos_token_id=1)
    return models.add_reward_head(OPTForCausalLM(cfg).eval())


@pytest.mark.parametrize("kind", ["llama_padding_with_eos", "opt_with_projection"])
def test_seqcls_export_gives_the_same_rewards_with_automodel(tmp_path, kind):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import test_tokenization as tt
    import tokenization
    if kind == "llama_padding_with_eos":      # SmolLM2-like: pad = EOS = <|im_end|> = 2, <|endoftext|> = 0 is unk
        tok, model, records = tt.smollm2_like(), tiny_llama(len(tt.CHATML_VOCAB)), [
            tt.CONVERSATION, {"prompt": "q q", "chosen": "a", "rejected": "a b c"}]
    else:
        tok, model, records = tt.opt_like(), opt_with_projection(len(tt.OPT_VOCAB)), [
            tt.CONVERSATION, {"prompt": "q x", "chosen": "a", "rejected": "b c d"}]
    assert model.reward_head.in_features == model.get_output_embeddings().in_features
    assert model.reward_head.bias is None                                # as HF's score heads
    torch.nn.init.normal_(model.reward_head.weight)
    oracle.save_seqcls(model, tok, str(tmp_path / "rm"))
    rm = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    rm_tok = AutoTokenizer.from_pretrained(str(tmp_path / "rm"))
    # the export pads with an id that never closes a sequence: <|endoftext|> (0) instead of <|im_end|> (2)
    assert rm.config.pad_token_id == rm_tok.pad_token_id == (0 if kind.startswith("llama") else tok.pad_token_id)
    examples = [tokenization.tokenize_pair(tok, r)[0] for r in records]
    ours = models.forward_with_reward(model, **{k: v for k, v in tokenization.collate(examples, tok.pad_token_id).items()
                                                if k in ("input_ids", "attention_mask")})[1]           # (4,)
    right = tokenization.collate(examples, rm_tok.pad_token_id)          # right-padded with the export's pad id
    assert (right["attention_mask"] == 0).any()                          # there is padding to get wrong
    theirs = rm(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    rows = [e["prompt_ids"] + e[s] for s in ("chosen_ids", "rejected_ids") for e in examples]
    T = max(map(len, rows))
    left = torch.tensor([[rm_tok.pad_token_id] * (T - len(r)) + r for r in rows])   # left padding
    torch.testing.assert_close(rm(input_ids=left, attention_mask=(torch.arange(T) >= T - torch.tensor(
        [len(r) for r in rows])[:, None]).long()).logits.squeeze(-1), ours, atol=1e-5, rtol=0)


def test_a_head_saved_with_a_bias_still_loads_with_its_bias(tmp_path):
    model = tiny_opt()
    torch.save({"weight": torch.ones(1, 16), "bias": torch.tensor([0.5])}, tmp_path / "old_head.pt")
    models.load_head(model, str(tmp_path / "old_head.pt"))
    _, r = models.forward_with_reward(model, torch.tensor([[2, 5, 1]]), torch.ones(1, 3, dtype=torch.long))
    h = model(input_ids=torch.tensor([[2, 5, 1]]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert r.item() == pytest.approx(h.sum().item() + 0.5, abs=1e-5)
