"""Tests of data.py and conditions.py: the loaders on small local files written in each source's own schema
(UltraFeedback, TL;DR, Anthropic HH, implicit prompts), hub options and their offline errors, validation
errors naming file, line and field, and the training conditions (label noise, margin splits). A few seconds.
"""
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402

import conditions  # noqa: E402
import data  # noqa: E402
from ranked import ranked_all_pairs  # noqa: E402

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
    assert [conditions.word_edit_distance(r["chosen"], r["rejected"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    splits = conditions.tldr_splits(ds)
    assert splits["hc_he"]["confidence"] == [5.0, 6.0]
    assert splits["lc_le"]["confidence"] == [1.0, 2.0]


def test_word_edit_distance_hand_cases():
    assert conditions.word_edit_distance("a b c", "a b c") == 0
    assert conditions.word_edit_distance("a b c", "a x c") == 1          # substitution
    assert conditions.word_edit_distance("a b c", "a c") == 1            # deletion
    assert conditions.word_edit_distance("", "a b") == 2


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
    ({**GOOD, "gold_response": 3}, r"line 2, field 'gold_response': expected a string .* got int 3"),
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
# Implicit prompts (Anthropic HH and any chosen/rejected pair of whole conversations)
# ------------------------------------------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_implicit_prompt_strings_are_cut_at_the_last_shared_word_boundary(tmp_path):
    rows = [{"chosen": "Q: capital of France? A: Paris.", "rejected": "Q: capital of France? A: Lyon."},
            {"chosen": "Q: hi A: Hello there", "rejected": "Q: hi A: Help me"},        # share "Hel": not cut there
            {"chosen": "Q: x A: yes", "rejected": "Q: x A: yes please"}]                # one extends the other
    ds = data.load_preferences(write_jsonl(tmp_path / "implicit.jsonl", rows))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in ds] == [
        ("Q: capital of France? A:", " Paris.", " Lyon."),
        ("Q: hi A:", " Hello there", " Help me"),
        ("Q: x A:", " yes", " yes please")]


def test_implicit_prompt_messages_share_their_leading_turns(tmp_path):
    u, a, b = ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
               {"role": "assistant", "content": "b"})
    rows = [{"chosen": [u, a], "rejected": [u, b], "chosen_score": 2.0, "rejected_score": 1.0},
            {"chosen": [u, a, u, a], "rejected": [u, a, u, b], "chosen_score": 1.0, "rejected_score": 0.0},
            {"chosen": [u, a], "rejected": [u, a], "chosen_score": 1.0, "rejected_score": 1.0}]   # identical
    ds = data.load_preferences(write_jsonl(tmp_path / "conversations.jsonl", rows))
    assert ds[0]["prompt"] == [u] and ds[0]["chosen"] == [a] and ds[0]["rejected"] == [b]
    assert ds[0]["chosen_score"] == 2.0                                              # other fields kept
    assert ds[1]["prompt"] == [u, a, u] and ds[1]["chosen"] == [a] and ds[1]["rejected"] == [b]
    assert ds[2]["prompt"] == [u] and ds[2]["chosen"] == ds[2]["rejected"] == [a]   # dropped at tokenization


def test_anthropic_hh_rows_become_conversations_with_the_shared_turns_as_prompt(tmp_path):
    # two rows exactly as Anthropic/hh-rlhf stores them: only chosen and rejected, whole "Human:/Assistant:" texts
    shared = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:"
    rows = [{"chosen": shared + " 6.", "rejected": shared + " 7, I think."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}]
    train, test, task = data.load_splits(write_jsonl(tmp_path / "hh.jsonl", rows * 5))
    assert task is None and len(train) + len(test) == 10
    first = next(r for r in list(train) + list(test) if r["chosen"][0]["content"] == "6.")
    assert first["prompt"] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
                               {"role": "user", "content": "And 3+3?"}]
    assert first["chosen"] == [{"role": "assistant", "content": "6."}]
    assert first["rejected"] == [{"role": "assistant", "content": "7, I think."}]


def test_implicit_rows_without_a_shared_prefix_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": "A: x", "rejected": "A: y"}, {"chosen": "x", "rejected": "y"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: no prompt field, and chosen and rejected share no "
                                         r"leading text .* add a prompt field"):
        data.load_preferences(path)
    path = write_jsonl(tmp_path / "none.jsonl", [{"chosen": "A: x", "rejected": None}])
    with pytest.raises(ValueError, match=r"none\.jsonl, line 1: field 'rejected': expected a string .* got null"):
        data.load_preferences(path)


# ------------------------------------------------------------------------------------------------------------
# Each hub source's own schema, in local files; hub configuration and splits; offline errors
# ------------------------------------------------------------------------------------------------------------
UF_ROW = {"prompt": "hi?", "prompt_id": "1", "messages": [], "score_chosen": 8.0, "score_rejected": 3.5,
          "chosen": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello"}],
          "rejected": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "go away"}]}


def test_files_in_ultrafeedback_and_tldr_schemas_are_converted_by_their_columns(tmp_path):
    ds = data.load_preferences(write_jsonl(tmp_path / "uf.jsonl", [UF_ROW] * 3))
    assert ds[0]["prompt"] == [{"role": "user", "content": "hi?"}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": "go away"}]
    assert (ds[0]["chosen_score"], ds[0]["rejected_score"]) == (8.0, 3.5)
    datasets.Dataset.from_list([_tldr_row(1, 7, "first one", "second one")] * 2).to_parquet(str(tmp_path / "t.parquet"))
    ds = data.load_preferences(str(tmp_path / "t.parquet"))
    assert ds[0]["chosen"] == " second one" and ds[0]["confidence"] == 7.0
    assert ds[0]["prompt"] == "SUBREDDIT: r/pets\nTITLE: a title\nPOST: my post\nTL;DR:"


def test_hub_splits_defaults_and_the_data_split_option():
    assert data.hub_splits("ultrafeedback") == ("train_prefs", "test_prefs")
    assert data.hub_splits("tldr") == ("train", "validation")
    assert data.hub_splits("hh") == ("train", "test")
    assert data.hub_splits("someone/pairs") == ("train", "test")
    assert data.hub_splits("someone/pairs", "train_sft,test_sft") == ("train_sft", "test_sft")
    assert data.hub_splits("someone/pairs", "train") == ("train", None)               # held out from train
    for bad in ("a,b,c", ",test", "train,"):
        with pytest.raises(ValueError, match="--data_split takes the hub dataset's training split"):
            data.hub_splits("someone/pairs", bad)


def test_hub_sources_get_their_config_and_splits_and_their_schema_converted(monkeypatch):
    # datasets.load_dataset replaced by a recorder that serves rows in each source's own schema
    calls = []
    served = {"Anthropic/hh-rlhf": [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                                      "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}],
              "HuggingFaceH4/ultrafeedback_binarized": [UF_ROW],
              "openai/summarize_from_feedback": [_tldr_row(0, 3, "left", "right")]}

    def load_dataset(path, name=None, split=None, data_dir=None):
        calls.append((path, name, data_dir, split))
        return datasets.Dataset.from_list(served[path])
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    train, test, _ = data.load_splits("hh", config="harmless-base")
    assert calls == [("Anthropic/hh-rlhf", None, "harmless-base", "train"), ("Anthropic/hh-rlhf", None, "harmless-base", "test")]
    assert train[0]["prompt"] == [{"role": "user", "content": "Hi"}] and test[0]["chosen"][0]["content"] == "Hello!"
    calls.clear()
    data.load_splits("ultrafeedback")
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", None, None, "train_prefs"),
                     ("HuggingFaceH4/ultrafeedback_binarized", None, None, "test_prefs")]
    calls.clear()
    train, test, _ = data.load_splits("tldr", split="train,validation")
    assert calls[0] == ("openai/summarize_from_feedback", "comparisons", None, "train")
    assert train[0]["chosen"] == " left" and train[0]["confidence"] == 3.0


def test_hub_config_and_split_on_local_data_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(ValueError, match="not a hub dataset"):
        data.load_splits(path, config="helpful-base")
    with pytest.raises(ValueError, match="not a hub dataset"):
        data.load_splits("embedded-tiny", split="train")


@pytest.mark.parametrize("source, config, split, shown", [
    ("ultrafeedback", "", "", r"'HuggingFaceH4/ultrafeedback_binarized' \(config 'default', split 'train_prefs'\)"),
    ("tldr", "", "", r"'openai/summarize_from_feedback' \(config 'comparisons', split 'train'\)"),
    ("hh", "helpful-base", "", r"'Anthropic/hh-rlhf' \(config 'helpful-base', split 'train'\)"),
    ("someone/pairs", "v2", "train_sft,test_sft", r"'someone/pairs' \(config 'v2', split 'train_sft'\)"),
])
def test_every_hub_source_offline_is_one_clear_message(source, config, split, shown):
    with pytest.raises(ValueError, match=shown + r" from the Hugging Face hub: .*Without internet, use --data embedded"):
        data.load_splits(source, config=config, split=split)


# ------------------------------------------------------------------------------------------------------------
# Noise and margin splits
# ------------------------------------------------------------------------------------------------------------
def _scored(n=30):
    return datasets.Dataset.from_list([{"prompt": "q", "chosen": f"c{i}", "rejected": f"r{i}",
                                        "chosen_score": float(i), "rejected_score": 0.0} for i in range(n)])


def test_flip_labels_swaps_exactly_round_p_n_and_moves_scores_with_texts():
    ds = conditions.flip_labels(_scored(30), 0.2, seed=3)
    flipped = [i for i, f in enumerate(ds["flipped"]) if f]
    assert len(flipped) == 6                                            # round(0.2 * 30)
    for i in range(30):
        row = ds[i]
        if i in flipped:
            assert (row["chosen"], row["rejected"]) == (f"r{i}", f"c{i}")
            assert (row["chosen_score"], row["rejected_score"]) == (0.0, float(i))
        else:
            assert (row["chosen"], row["chosen_score"]) == (f"c{i}", float(i))
    assert conditions.flip_labels(_scored(30), 0.2, seed=3)["flipped"] == ds["flipped"]   # seeded
    assert conditions.flip_labels(_scored(30), 0.2, seed=4)["flipped"] != ds["flipped"]


def test_split_by_margin_separates_small_and_large_margins():
    det, nondet = conditions.split_by_margin(_scored(30))                     # margins 0..29
    # 1/3 and 2/3 quantiles of 0..29 are 9.667 and 19.333: det = margins 20..29, nondet = 0..9
    assert det["chosen_score"] == [float(i) for i in range(20, 30)]
    assert nondet["chosen_score"] == [float(i) for i in range(0, 10)]


# ------------------------------------------------------------------------------------------------------------
# TPO's triples
# ------------------------------------------------------------------------------------------------------------
def test_ranked_triples_take_best_second_and_worst():
    ranked = [{"prompt": "p1", "responses": ["a", "b", "c", "d"], "scores": [0.1, 0.9, -0.5, 0.4]},
              {"prompt": "p2", "responses": ["a", "b", "c"], "scores": [0.0, 0.0, 0.0]},        # second = worst: out
              {"prompt": "p3", "responses": ["x", " ", "z"], "scores": [0.3, 0.2, 0.1]}]        # empty response: out
    rows = list(data.ranked_triples(ranked))
    # p1: best b (0.9), second d (0.4), worst c (-0.5)
    assert rows == [{"prompt": "p1", "gold_response": "b", "chosen": "d", "rejected": "c", "chosen_gold": 0.4,
                     "rejected_gold": -0.5}]
    with pytest.raises(ValueError, match="at least 3 responses"):
        data.ranked_triples([{"prompt": "p", "responses": ["a", "b"], "scores": [1.0, 0.0]}])


def test_triples_from_a_file_need_its_gold_response_column(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [GOOD] * 4)
    with pytest.raises(ValueError, match="has no 'gold_response' column"):
        data.load_splits(str(path), triples=True)
    write_jsonl(path, [{**GOOD, "gold_response": "best"}] * 4)
    train, _, _ = data.load_splits(str(path), triples=True)
    assert train[0]["gold_response"] == "best"


def test_curriculum_stages_pair_the_best_with_the_k_th_worst():
    ranked = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [0.2, 0.9, -0.5, 0.4]},   # b > d > a > c
              {"prompt": "q", "responses": ["w", "x", "y", "z"], "scores": [0.0, 0.0, 0.3, 0.0]}]
    # stage 1 (easy): best vs worst; stage 3 (hard): best vs second best. q: y is best, the three others tie
    # and keep the file's order (w, x, z), so z counts as the worst
    assert [(r["chosen"], r["rejected"]) for r in data.ranked_pairs(ranked, 1)] == [("b", "c"), ("y", "z")]
    assert [(r["chosen"], r["rejected"]) for r in data.ranked_pairs(ranked, 2)] == [("b", "a"), ("y", "x")]
    assert [(r["chosen"], r["rejected"], r["chosen_gold"], r["rejected_gold"])
            for r in data.ranked_pairs(ranked, 3)] == [("b", "d", 0.9, 0.4), ("y", "w", 0.3, 0.0)]
    with pytest.raises(ValueError, match="the stages are 1..3"):
        data.ranked_pairs(ranked, 4)


def test_ranked_all_pairs_keep_every_pair_whose_scores_differ_the_higher_one_chosen():
    ranked = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [0.2, 0.9, -0.5, 0.4]},   # b > d > a > c
              {"prompt": "q", "responses": ["w", "x", "y", "z"], "scores": [0.0, 0.0, 0.3, 0.0]},    # ties: out
              {"prompt": "r", "responses": ["u", " ", "v"], "scores": [0.1, 0.5, 0.0]}]             # empty: out
    rows = [(r["prompt"], r["chosen"], r["rejected"], r["chosen_gold"], r["rejected_gold"])
            for r in ranked_all_pairs(ranked)]
    # p: all C(4, 2) = 6 pairs; q: only y against each of the three tied ones; r: only u vs v
    assert rows == [("p", "b", "a", 0.9, 0.2), ("p", "a", "c", 0.2, -0.5), ("p", "d", "a", 0.4, 0.2),
                    ("p", "b", "c", 0.9, -0.5), ("p", "b", "d", 0.9, 0.4), ("p", "d", "c", 0.4, -0.5),
                    ("q", "y", "w", 0.3, 0.0), ("q", "y", "x", 0.3, 0.0),
                    ("q", "y", "z", 0.3, 0.0), ("r", "u", "v", 0.1, 0.0)]
    # the best-vs-worst pair of every prompt is among them
    for r in data.ranked_pairs(ranked[:2], 1):
        assert (r["prompt"], r["chosen"], r["rejected"]) in [x[:3] for x in rows]
    with pytest.raises(ValueError, match="no prompt has two responses with different scores"):
        ranked_all_pairs([ranked[1] | {"scores": [0.0] * 4}])


def test_ranked_groups_keep_every_response_and_pair_the_best_with_the_worst():
    ranked = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [0.2, 0.9, -0.5, 0.4]},
              {"prompt": "q", "responses": ["w", "x", "y", "z"], "scores": [0.0, 0.0, 0.0, 0.0]},      # all tie: out
              {"prompt": "r", "responses": ["w", "", "y", "z"], "scores": [0.0, 1.0, 0.0, 0.0]}]       # empty: out
    rows = list(data.ranked_groups(ranked))
    assert rows == [{"prompt": "p", "chosen": "b", "rejected": "c", "responses": ["a", "b", "c", "d"],
                     "chosen_gold": 0.9, "rejected_gold": -0.5}]
