"""Tests of oracle.py on a tiny random OPT (seconds): the first loss against an independent computation, BT
training separates chosen from rejected, and the command line's bad inputs (one clear error, nothing cached)."""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import oracle  # noqa: E402
from test_models import pair_batch, tiny_opt  # noqa: E402


def test_first_loss_is_log2_plus_alpha_nll_of_the_chosen_rows():
    # zero head -> R_w = R_l = 0 -> BT = log 2; plus alpha times the token-averaged NLL of the CHOSEN responses,
    # computed here row by row from a plain log_softmax (not from the code's own metrics): prompt [2, 3] +
    # chosen [4, 5, 1] and prompt [2] + chosen [4, 4, 1]
    model = tiny_opt()
    loss, metrics = oracle.oracle_batch_loss(model, pair_batch(), alpha=0.5)
    nll = []
    for prompt, chosen in (([2, 3], [4, 5, 1]), ([2], [4, 4, 1])):
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + chosen])).logits[0].double(), -1)
        nll.append(-sum(logp[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(chosen)) / len(chosen))
    expected = math.log(2.0) + 0.5 * sum(nll) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(metrics["bt_loss"], torch.full((2,), math.log(2.0)))


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


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.jsonl"], "does not exist"),
    (["--ensemble", "0"], r"--ensemble must be in \[1, inf\); got 0"),
    (["--held_out", "1.5"], r"--held_out must be in \(0, 1\)"),
    (["--lr", "-1"], r"--lr must be in \(0, inf\)"),
])
def test_bad_inputs_give_one_clear_error_and_cache_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("DRDO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match=message):
        oracle.main(["--out", str(tmp_path / "o"), *args])
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "cache").exists() or not any(
        d.startswith(("oracle-", "scored-")) for d in os.listdir(tmp_path / "cache"))
