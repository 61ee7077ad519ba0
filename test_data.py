"""Tests of data.py: the tokenization rules and collation on hand-written token ids, the loaders on small
local files written in each source's own schema, noise and splits, and the error messages. A few seconds.
"""
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

import data  # noqa: E402

# A word-level tokenizer with hand-picked ids, so expected tensors can be written out by hand.
VOCAB = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "q": 3, "a": 4, "b": 5, "c": 6, "d": 7, "x": 8, "y": 9}


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


# ------------------------------------------------------------------------------------------------------------
# Tokenization
# ------------------------------------------------------------------------------------------------------------
def test_tokenize_pair_concatenates_ids_with_one_eos(tok):
    out, reason = data.tokenize_pair(tok, {"prompt": "q x", "chosen": "a b", "rejected": "c <eos> <eos>"})
    assert reason is None
    assert out["prompt_ids"] == [3, 8]                 # "q x"
    assert out["chosen_ids"] == [4, 5, 1]              # "a b" + one EOS
    assert out["rejected_ids"] == [6, 1]               # trailing EOS tokens collapse to exactly one


def test_tokenize_pair_truncates_prompt_end_first_then_responses(tok):
    record = {"prompt": "q a b c d x", "chosen": "a b c", "rejected": "d"}
    # max_length 6, max_prompt_length 2: prompt 6 + chosen 4 > 6 -> prompt keeps its last 2 ids [7, 8];
    # room for a response = 6 - 2 - 1 (EOS) = 3 -> chosen [4, 5, 6] fits, then EOS
    out, _ = data.tokenize_pair(tok, record, max_length=6, max_prompt_length=2)
    assert out["prompt_ids"] == [7, 8]
    assert out["chosen_ids"] == [4, 5, 6, 1]
    assert out["rejected_ids"] == [7, 1]
    # max_length 5: room 2 -> chosen cut to its first 2 tokens, EOS kept
    out, _ = data.tokenize_pair(tok, record, max_length=5, max_prompt_length=2)
    assert out["chosen_ids"] == [4, 5, 1] and len(out["prompt_ids"]) + len(out["chosen_ids"]) == 5


def test_tokenize_pair_drops_empty_and_identical(tok):
    assert data.tokenize_pair(tok, {"prompt": "q", "chosen": "", "rejected": "a"}) == (None, "empty response")
    assert data.tokenize_pair(tok, {"prompt": "q", "chosen": "a b", "rejected": "a b"}) == \
        (None, "chosen equals rejected")
    # identical only after truncation: "a b c" vs "a b d" with room for 2 tokens
    rec = {"prompt": "q", "chosen": "a b c", "rejected": "a b d"}
    assert data.tokenize_pair(tok, rec, max_length=4, max_prompt_length=1) == (None, "chosen equals rejected")


def test_tokenize_dataset_counts_drops(tok):
    ds = datasets.Dataset.from_list([
        {"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 1.0, "rejected_score": 0.0},
        {"prompt": "q", "chosen": "a", "rejected": "a", "chosen_score": 1.0, "rejected_score": 1.0},
        {"prompt": "q", "chosen": "", "rejected": "b", "chosen_score": 0.5, "rejected_score": 0.0},
    ])
    logged = []
    examples, dropped = data.tokenize_dataset(tok, ds, log=logged.append)
    assert len(examples) == 1 and examples[0]["chosen_score"] == 1.0
    assert dropped == {"chosen equals rejected": 1, "empty response": 1}
    assert "kept 1 of 3" in logged[0]


def test_impossible_lengths_are_a_clear_error(tok):
    with pytest.raises(ValueError, match="leaves no room"):
        data.tokenize_pair(tok, {"prompt": "q a b", "chosen": "c", "rejected": "d"}, max_length=3, max_prompt_length=2)


# ------------------------------------------------------------------------------------------------------------
# Collation
# ------------------------------------------------------------------------------------------------------------
def test_collate_stacks_chosen_then_rejected_right_padded():
    examples = [
        {"prompt_ids": [3, 8], "chosen_ids": [4, 5, 1], "rejected_ids": [6, 1], "chosen_score": 0.9, "rejected_score": 0.1},
        {"prompt_ids": [3], "chosen_ids": [7, 1], "rejected_ids": [9, 9, 9, 1], "chosen_score": 0.2, "rejected_score": 0.4},
    ]
    b = data.collate(examples, pad_token_id=0)
    assert b["input_ids"].tolist() == [
        [3, 8, 4, 5, 1],      # pair 0: prompt + chosen
        [3, 7, 1, 0, 0],      # pair 1: prompt + chosen, 2 pads
        [3, 8, 6, 1, 0],      # pair 0: prompt + rejected, 1 pad
        [3, 9, 9, 9, 1],      # pair 1: prompt + rejected
    ]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    torch.testing.assert_close(b["chosen_scores"], torch.tensor([[0.9, 0.2]]))       # (K = 1, B = 2)
    torch.testing.assert_close(b["rejected_scores"], torch.tensor([[0.1, 0.4]]))


def test_collate_ensemble_scores_are_k_by_b():
    examples = [{"prompt_ids": [3], "chosen_ids": [4, 1], "rejected_ids": [5, 1],
                 "chosen_score": [1.0, 2.0, 3.0], "rejected_score": [0.0, 0.5, 1.0]}] * 2
    b = data.collate(examples, pad_token_id=0)
    assert b["chosen_scores"].shape == (3, 2)
    torch.testing.assert_close(b["chosen_scores"][:, 0], torch.tensor([1.0, 2.0, 3.0]))


# ------------------------------------------------------------------------------------------------------------
# Loaders on local files in each source's own schema
# ------------------------------------------------------------------------------------------------------------
def test_from_ultrafeedback_keeps_scores_and_splits_messages():
    row = {"prompt": "hi?", "prompt_id": "1", "messages": [],
           "chosen": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "go away"}],
           "score_chosen": 8.0, "score_rejected": 3.5}
    ds = data.from_ultrafeedback(datasets.Dataset.from_list([row]))
    assert ds[0]["prompt"] == [{"role": "user", "content": "hi?"}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "hello"}]
    assert (ds[0]["chosen_score"], ds[0]["rejected_score"]) == (8.0, 3.5)


def _tldr_row(choice, confidence, a, b):
    return {"info": {"id": "t", "post": "my post", "title": "a title", "subreddit": "pets", "site": None,
                     "article": None},
            "summaries": [{"text": a, "policy": "p", "note": None}, {"text": b, "policy": "q", "note": None}],
            "choice": choice, "worker": "w", "batch": "b", "split": "train", "extra": {"confidence": confidence}}


def test_from_tldr_uses_choice_and_keeps_confidence():
    ds = data.from_tldr(datasets.Dataset.from_list([_tldr_row(1, 7, "first one", "second one"),
                                                    _tldr_row(0, None, "left", "right")]))
    assert ds[0]["chosen"] == " second one" and ds[0]["rejected"] == " first one"
    assert ds[0]["prompt"] == "SUBREDDIT: r/pets\nTITLE: a title\nPOST: my post\nTL;DR:"
    assert ds[0]["confidence"] == 7.0 and math.isnan(ds[1]["confidence"])


def test_tldr_splits_by_confidence_and_edit_distance():
    # 6 pairs: confidence 1..6 and word edit distances 0..5 between chosen and rejected (rising together),
    # terciles of 1..6 are 2.667 and 4.333: pairs with both >= upper (conf 5, 6) and both <= lower (conf 1, 2)
    rows = []
    for k in range(6):
        chosen = "w " * 5
        rejected = "v " * k + "w " * (5 - k)
        rows.append({"prompt": "p", "chosen": chosen, "rejected": rejected, "confidence": float(k + 1)})
    ds = datasets.Dataset.from_list(rows)
    assert [data.word_edit_distance(r["chosen"], r["rejected"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    splits = data.tldr_splits(ds)
    assert splits["hc_he"]["confidence"] == [5.0, 6.0]
    assert splits["lc_le"]["confidence"] == [1.0, 2.0]


def test_word_edit_distance_hand_cases():
    assert data.word_edit_distance("a b c", "a b c") == 0
    assert data.word_edit_distance("a b c", "a x c") == 1          # substitution
    assert data.word_edit_distance("a b c", "a c") == 1            # deletion
    assert data.word_edit_distance("", "a b") == 2


def test_local_files_of_every_type_load_and_validate(tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 1.0, "rejected_score": 0.0}] * 3
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "d.csv"), index=False)
    for ext in ("jsonl", "json", "parquet", "csv"):
        ds = data.load_preferences(str(tmp_path / f"d.{ext}"))
        assert len(ds) == 3 and ds[0]["chosen"] == "a" and ds[0]["chosen_score"] == 1.0


def test_bad_data_errors_name_the_problem(tmp_path):
    missing = tmp_path / "missing_col.jsonl"
    missing.write_text(json.dumps({"prompt": "q", "chosen": "a"}))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\].*expected columns"):
        data.load_preferences(str(missing))
    nonfinite = tmp_path / "nan.jsonl"
    nonfinite.write_text("\n".join(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b",
                                               "chosen_score": s, "rejected_score": 0.0})
                                   for s in (1.0, float("inf"))))
    with pytest.raises(ValueError, match=r"row 1, field 'chosen_score'"):
        data.load_preferences(str(nonfinite))
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match="empty"):
        data.load_preferences(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_preferences(str(tmp_path / "nope.jsonl"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("this is not parquet")
    with pytest.raises(ValueError, match="garbage.parquet"):
        data.load_preferences(str(garbage))


# ------------------------------------------------------------------------------------------------------------
# Noise and margin splits
# ------------------------------------------------------------------------------------------------------------
def _scored(n=30):
    return datasets.Dataset.from_list([{"prompt": "q", "chosen": f"c{i}", "rejected": f"r{i}",
                                        "chosen_score": float(i), "rejected_score": 0.0} for i in range(n)])


def test_flip_labels_swaps_exactly_round_p_n_and_moves_scores_with_texts():
    ds = data.flip_labels(_scored(30), 0.2, seed=3)
    flipped = [i for i, f in enumerate(ds["flipped"]) if f]
    assert len(flipped) == 6                                            # round(0.2 * 30)
    for i in range(30):
        row = ds[i]
        if i in flipped:
            assert (row["chosen"], row["rejected"]) == (f"r{i}", f"c{i}")
            assert (row["chosen_score"], row["rejected_score"]) == (0.0, float(i))
        else:
            assert (row["chosen"], row["chosen_score"]) == (f"c{i}", float(i))
    assert data.flip_labels(_scored(30), 0.2, seed=3)["flipped"] == ds["flipped"]   # seeded
    assert data.flip_labels(_scored(30), 0.2, seed=4)["flipped"] != ds["flipped"]


def test_split_by_margin_separates_small_and_large_margins():
    det, nondet = data.split_by_margin(_scored(30))                     # margins 0..29
    # 1/3 and 2/3 quantiles of 0..29 are 9.667 and 19.333: det = margins 20..29, nondet = 0..9
    assert det["chosen_score"] == [float(i) for i in range(20, 30)]
    assert nondet["chosen_score"] == [float(i) for i in range(0, 10)]
