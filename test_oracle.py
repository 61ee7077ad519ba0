"""Tests of oracle.py on a tiny random OPT (seconds): the first loss against an independent computation, BT
training separates chosen from rejected, and the command line's bad inputs (one clear error, nothing cached)."""
import json
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


def test_a_given_oracle_is_used_frozen_and_a_bad_one_is_refused_before_anything_is_written(cache, tmp_path,
                                                                                          monkeypatch, capsys):
    # oracle.py --out DIR trains one Oracle; train.py --oracle_dir DIR scores the pairs with exactly its member
    # and trains none (ensure_oracles would raise)
    import train
    from train_test_helpers import run
    oracle.main(["--data", "embedded-tiny", "--out", str(tmp_path / "oracle"), "--epochs", "1", "--no-score",
                 "--no-seqcls"])
    scored = []
    real_score = oracle.score_dataset
    monkeypatch.setattr(oracle, "score_dataset", lambda members, *a, **k: scored.append(members) or real_score(members, *a, **k))
    monkeypatch.setattr(oracle, "ensure_oracles", lambda *a, **k: pytest.fail("an Oracle was trained"))
    capsys.readouterr()
    s = run(tmp_path, "--method", "drdo", "--epochs", "0.3", "--oracle_dir", str(tmp_path / "oracle"))
    assert scored == [[str(tmp_path / "oracle" / "member-0")]] * 2 and s["steps"] > 0          # train, held-out
    assert "Oracle: 1 member(s) given by --oracle_dir" in capsys.readouterr().out
    # not an Oracle: one message naming the fix; the run directory is never created
    for bad, said in ((tmp_path / "nowhere", "no such directory"), (tmp_path, "holds no report.json")):
        with pytest.raises(SystemExit, match=f"--oracle_dir .*{said}.*python oracle.py --out"):
            train.main(["--data", "embedded-tiny", "--method", "drdo", "--oracle_dir", str(bad),
                        "--out", str(tmp_path / "refused")])
        assert not (tmp_path / "refused").exists()
    with pytest.raises(SystemExit, match="--method dpo reads none"):
        train.main(["--data", "embedded-tiny", "--method", "dpo", "--oracle_dir", str(tmp_path / "oracle"),
                    "--out", str(tmp_path / "refused")])


def test_an_ensemble_prints_the_held_out_accuracy_of_its_mean_reward(cache, tmp_path, capsys):
    # drdo and distill read the members' MEAN reward: oracle.py reports that Oracle's held-out accuracy, recomputed
    # here from each member's held-out scores (ties count half) and the gold margins' correlation
    from transformers import AutoTokenizer

    import data
    import tokenization
    oracle.main(["--data", "embedded-tiny", "--out", str(tmp_path / "ens"), "--epochs", "1", "--ensemble", "2",
                 "--no-score", "--no-seqcls"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ensemble mean:"))
    _, test_ds, _ = data.load_splits("embedded-tiny", log=lambda *a, **k: None)
    members = oracle.saved_members(str(tmp_path / "ens"))
    margins = []
    for d in members:                                   # each member alone, as evaluate_oracle scores it
        model = oracle.load_reward_model(d)
        ex, _ = tokenization.tokenize_dataset(AutoTokenizer.from_pretrained(d), test_ds, 128, 64, log=lambda *a: None)
        c, r = oracle.score_examples(model.eval(), ex)
        margins.append((c - r).double())
    m = torch.stack(margins).mean(0)
    acc = ((m > 0).double() + 0.5 * (m == 0).double()).mean().item()
    gold = torch.tensor([test_ds[e["row"]]["chosen_gold"] - test_ds[e["row"]]["rejected_gold"] for e in ex]).double()
    corr = torch.corrcoef(torch.stack([m, gold]))[0, 1].item()
    assert len(members) == 2 and f"held-out accuracy {acc:.3f} +- " in line and f"corr. with gold margin {corr:.2f}" in line


def test_a_stronger_oracle_trains_on_every_pair_of_the_k_samples_under_the_run_condition(cache, tmp_path,
                                                                                        monkeypatch, capsys):
    # --oracle_pairs all: the Oracle learns from ranked.ranked_all_pairs of the task's K samples per training prompt,
    # flipped like the policy's pairs; the policy still trains on (and the Oracle scores) the best-vs-worst pairs
    import conditions
    import data
    import ranked
    from train_test_helpers import run
    seen = []
    real = oracle.ensure_oracles
    monkeypatch.setattr(oracle, "ensure_oracles", lambda cfg, ds, *a, **k: seen.append((cfg, ds)) or real(cfg, ds, *a, **k))
    s = run(tmp_path, "--method", "drdo", "--epochs", "0.3", "--oracle_epochs", "1", "--oracle_pairs", "all",
            "--flip", "0.2", "--seed", "3")
    train_ds, _, task = data.load_splits("embedded-tiny", log=lambda *a, **k: None)
    expected = conditions.apply_condition(ranked.ranked_all_pairs(task["train_ranked"]), flip=0.2, seed=3)
    (cfg, ds), = seen
    assert cfg.pairs == "all" and data.fingerprint(ds) == data.fingerprint(expected)
    assert len(ds) > 2 * len(train_ds) and s["steps"] > 0
    # the same Oracle from oracle.py --pairs all: its report counts those pairs (unflipped here)
    oracle.main(["--data", "embedded-tiny", "--out", str(tmp_path / "all"), "--epochs", "1", "--pairs", "all",
                 "--no-score", "--no-seqcls"])
    with open(tmp_path / "all" / "report.json") as f:
        assert json.load(f)["train_pairs"] == len(ranked.ranked_all_pairs(task["train_ranked"]))
    # refused before anything is written: a method without an Oracle, a given Oracle, data without K samples
    import train
    for args, said in ((["--method", "dpo"], "--method dpo reads no Oracle"),
                       (["--method", "drdo", "--oracle_dir", str(tmp_path / "all")], "given a trained one"),
                       (["--method", "drdo", "--oracle_pairs", "most"], "must be best-worst or all; got 'most'")):
        with pytest.raises(SystemExit, match=said):
            train.main(["--data", "embedded-tiny", "--oracle_pairs", "all", *args, "--out", str(tmp_path / "no")])
        assert not (tmp_path / "no").exists()
    with pytest.raises(ValueError, match="only the embedded task keeps"):
        oracle.training_pairs("all", train_ds, None)
