"""Tests of oracle.py's model pieces on a tiny random OPT (seconds): last-token pooling with right and left
padding, the first loss value, save/load round trip, and that BT training separates chosen from rejected."""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM  # noqa: E402

import oracle  # noqa: E402
from data import collate  # noqa: E402


def tiny_opt(seed=0):
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                    max_position_embeddings=32, word_embed_proj_dim=16, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    return oracle.add_reward_head(OPTForCausalLM(cfg).eval())


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0],     # right padded: last real token at 2
                         [1, 1, 1, 1, 1],     # full: 4
                         [0, 0, 1, 1, 1]])    # left padded: 4
    assert oracle.last_token_index(mask).tolist() == [2, 4, 4]


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    model = tiny_opt()
    torch.nn.init.normal_(model.reward_head.weight)            # a non-zero head, so rewards differ
    seqs = [[2, 5, 6, 7, 1], [2, 9, 1]]
    alone = torch.stack([oracle.oracle_forward(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[1][0]
                         for s in seqs])
    right = torch.tensor([[2, 5, 6, 7, 1], [2, 9, 1, 0, 0]])
    left = torch.tensor([[2, 5, 6, 7, 1], [0, 0, 2, 9, 1]])
    _, r_right = oracle.oracle_forward(model, right, (right != 0).long())
    _, r_left = oracle.oracle_forward(model, left, (left != 0).long())
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_left, alone, atol=1e-5, rtol=1e-5)


def _batch():
    examples = [{"prompt_ids": [2, 3], "chosen_ids": [4, 5, 1], "rejected_ids": [6, 1]},
                {"prompt_ids": [2], "chosen_ids": [4, 4, 1], "rejected_ids": [7, 8, 9, 1]}]
    return collate(examples, pad_token_id=0)


def test_first_loss_is_log2_plus_alpha_nll():
    # zero head -> R_w = R_l = 0 -> BT = log 2; plus alpha times the token-averaged NLL of the chosen rows
    model = tiny_opt()
    batch = _batch()
    loss, metrics = oracle.oracle_batch_loss(model, batch, alpha=0.5)
    torch.testing.assert_close(metrics["bt_loss"], torch.full((2,), math.log(2.0)))
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)) + 0.5 * metrics["nll_loss"].mean())
    assert 1.0 < metrics["nll_loss"].mean() < 5.0          # a random 16-token model: NLL near log 16 = 2.77


def test_bt_training_separates_chosen_from_rejected_and_round_trips(tmp_path):
    model = tiny_opt().train()
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss, metrics = oracle.oracle_batch_loss(model, batch, alpha=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    chosen, rejected = oracle.score(model, batch)
    assert torch.all(chosen > rejected)
    oracle.save_oracle(model, None, str(tmp_path / "o"))
    reloaded = oracle.load_oracle(str(tmp_path / "o"))
    c2, r2 = oracle.score(reloaded, batch)
    torch.testing.assert_close((c2, r2), (chosen, rejected))


def test_loading_a_plain_lm_as_oracle_is_a_clear_error(tmp_path):
    tiny_opt().save_pretrained(tmp_path / "lm")
    with pytest.raises(FileNotFoundError, match="not an Oracle"):
        oracle.load_oracle(str(tmp_path / "lm"))
