"""bench.py: the benchmark's printed numbers agree with each other; the synthetic shapes are what they claim;
bench_trl.py's text gives TRL back the same token ids."""
import json
import os
import statistics

import pytest

import bench


def test_benchmark_prints_consistent_numbers(cache, tmp_path, capsys):
    res = bench.main(["--method", "dpo", "--model", "tiny", "--data", "embedded-tiny", "--steps", "2",
                      "--batch_size", "4", "--micro_batch_size", "2", "--max_length", "48", "--max_prompt_length", "16"])
    assert res["tokens_per_step"] == res["padded_tokens_per_step"] == 2 * 4 * 48      # fixed: every row full
    assert res["step_s"] > 0 and res["tokens_per_s"] == pytest.approx(res["tokens_per_step"] / res["step_s"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "dpo"


def test_real_tokens_are_the_pairs_tokens_whatever_the_packing(cache):
    # the timed steps' pairs (after the warm-up step's), counted by hand: prompt twice, each response once
    args = ["--method", "dpo", "--model", "tiny", "--data", "embedded-tiny", "--steps", "2", "--batch_size", "4",
            "--micro_batch_size", "4", "--max_length", "64", "--max_prompt_length", "48", "--shape", "tldr"]
    pairs = bench.synthetic_pairs("tldr", 12, 64, 48, 10**6)[4:]
    want = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs) / 2
    for mode in ("off", "both"):
        res = bench.main([*args, "--packing", mode])
        assert res["tokens_per_step"] == want and res["packing"] == mode
        assert res["padded_tokens_per_step"] > want                               # collated rows hold padding


def test_synthetic_shapes():
    T, P_max = 256, 224
    for shape in bench.SHAPES:
        pairs = bench.synthetic_pairs(shape, 200, T, P_max, 1000)
        assert pairs == bench.synthetic_pairs(shape, 200, T, P_max, 1000)             # seeded
        for p in pairs:
            P, rc, rr = len(p["prompt_ids"]), len(p["chosen_ids"]), len(p["rejected_ids"])
            assert 1 <= P <= P_max and P + max(rc, rr) <= T and min(rc, rr) >= 2
            assert p["chosen_ids"][-1] == p["rejected_ids"][-1] == bench.EOS_ID
        ratio = [len(p["prompt_ids"]) / ((len(p["chosen_ids"]) + len(p["rejected_ids"])) / 2) for p in pairs]
        rows = sorted(len(p["prompt_ids"]) + len(p["chosen_ids"]) for p in pairs)
        if shape == "tldr":
            assert 3.5 < statistics.median(ratio) < 4.5                                # prompt ~ 4x response
        if shape == "ultrafeedback":
            assert rows[-10] / rows[10] > 5                                           # a long tail: ~10x spread
        if shape == "fixed":
            assert set(rows) == {T}


def test_trl_reads_back_the_same_token_ids():
    # bench_trl writes each pair as words; TRL tokenizes prompt and prompt + response: the same ids as bench's
    import bench_trl
    tok = bench_trl.word_tokenizer(50272)
    for p in bench.synthetic_pairs("ultrafeedback", 20, 256, 224, 50272):
        text = bench_trl.as_text(p["prompt_ids"]) + " " + bench_trl.as_text(p["chosen_ids"])
        assert tok(text)["input_ids"] == p["prompt_ids"] + p["chosen_ids"]
        assert tok(bench_trl.as_text(p["prompt_ids"]))["input_ids"] == p["prompt_ids"]


def test_online_step_times_rounds_and_splits_them(cache):
    res = bench.main(["--online_step", "--data", "embedded-tiny", "--steps", "2", "--batch_size", "8",
                      "--micro_batch_size", "8"])
    assert res["rounds"] == 2 and res["online_step_seconds"] > 0 and res["generation_tokens_per_second"] > 0
    assert abs(res["share_sample"] + res["share_label"] + res["share_train"] - 1) < 0.01
    for t in (2, 3):                                       # each timed round: one optimizer step on 8 prompts
        with open(os.path.join(res["out"], f"round-{t}", "round.json")) as f:
            assert json.load(f)["prompts"] == 8
