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


GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("bad_line, message", [
    # each case: line 2 of a JSONL file is bad (line 1 is GOOD); the error names file, line, field and the fix
    ({"prompt": "q", "chosen": None, "rejected": "b"},
     r"bad\.jsonl, line 2, field 'chosen': expected a string or a list of chat messages .* got null; fix or drop"),
    ({"prompt": "q", "chosen": 7, "rejected": "b"}, r"line 2, field 'chosen': .* got int 7"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, r"line 2, field 'prompt': .* got list"),
    ({"prompt": "q", "chosen": [], "rejected": "b"}, r"line 2, field 'chosen': .* got list \[\]"),
    ({**GOOD, "chosen_score": "abc", "rejected_score": 0.0},
     r"line 2, field 'chosen_score': expected a finite number .* got str 'abc'; drop or re-score"),
    ({**GOOD, "chosen_score": 1.0, "rejected_score": float("inf")}, r"line 2, field 'rejected_score': .* got float inf"),
    ({**GOOD, "chosen_score": True, "rejected_score": 0.0}, r"line 2, field 'chosen_score': .* got bool True"),
    ({**GOOD, "chosen_score": [1.0, 2.0], "rejected_score": [0.0]}, r"line 2: chosen_score and rejected_score must"),
    ({"prompt": "q", "chosen": "a"}, r"line 2: missing field\(s\) \['rejected'\].*expected columns"),
    ("this is {not json", r"bad\.jsonl, line 2: not valid JSON .* fix or delete that line"),
    ([1, 2], r"line 2: expected one JSON object per line, got list"),
])
def test_malformed_jsonl_rows_name_file_line_and_field(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    bad = bad_line if isinstance(bad_line, str) else json.dumps(bad_line)
    path.write_text(json.dumps(GOOD) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match=message):
        data.load_preferences(str(path))


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n\n" + json.dumps({**GOOD, "rejected": None}) + "\n")
    with pytest.raises(ValueError, match=r"gaps\.jsonl, line 4, field 'rejected'"):
        data.load_preferences(str(path))


def test_other_bad_files_name_the_problem(tmp_path):
    csv_path = tmp_path / "scores.csv"
    csv_path.write_text("prompt,chosen,rejected,chosen_score,rejected_score\nq,a,b,1.0,0.0\nq,c,d,abc,0.0\n")
    with pytest.raises(ValueError, match=r"scores\.csv, row 2 after the header, field 'chosen_score': .* got str 'abc'"):
        data.load_preferences(str(csv_path))
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
    mixed = tmp_path / "mixed.jsonl"                  # each row valid, but one field is a string in one row and
    mixed.write_text(json.dumps(GOOD) + "\n" + json.dumps(   # a message list in the other
        {**GOOD, "chosen": [{"role": "assistant", "content": "a"}]}) + "\n")
    with pytest.raises(ValueError, match="do not share one type per field"):
        data.load_preferences(str(mixed))


def test_valid_rows_with_messages_scores_and_nan_confidence_load(tmp_path):
    path = tmp_path / "ok.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}], "chosen_score": [1.0, 2], "rejected_score": [0.0, 1],
             "confidence": float("nan")}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = data.load_preferences(str(path))
    assert len(ds) == 1 and ds[0]["chosen_score"] == [1.0, 2.0]


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
