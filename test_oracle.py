"""Tests of oracle.py's loss and training on a tiny random OPT (seconds): the first loss value against a
hand computation, and that BT training separates chosen from rejected."""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import oracle  # noqa: E402
from test_models import pair_batch, tiny_opt  # noqa: E402


def test_first_loss_is_log2_plus_alpha_nll():
    # zero head -> R_w = R_l = 0 -> BT = log 2; plus alpha times the token-averaged NLL of the chosen rows
    model = tiny_opt()
    batch = pair_batch()
    loss, metrics = oracle.oracle_batch_loss(model, batch, alpha=0.5)
    torch.testing.assert_close(metrics["bt_loss"], torch.full((2,), math.log(2.0)))
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)) + 0.5 * metrics["nll_loss"].mean())
    assert 1.0 < metrics["nll_loss"].mean() < 5.0          # a random 16-token model: NLL near log 16 = 2.77


def test_bt_training_separates_chosen_from_rejected():
    model = tiny_opt().train()
    batch = pair_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss, metrics = oracle.oracle_batch_loss(model, batch, alpha=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    chosen, rejected = oracle.score(model, batch)
    assert torch.all(chosen > rejected)
