"""Tests of evaluate.py and judges.py: the statistics against hand-computed cases and closed forms (bootstrap
intervals included), a short end-to-end evaluation on the embedded-tiny task with its gold judge, and one on a
small local conversational file with locally built reward models as judges (the Oracle, its sequence-
classification export, and a classifier with another tokenizer). Seconds."""
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import evaluate  # noqa: E402
import stats  # noqa: E402
import oracle  # noqa: E402
import tokenization  # noqa: E402


def test_paired_comparison_hand_computed():
    # prompt 1: policy samples (1, 0), reference (0, 0) -> win, tie;  prompt 2: (0, 0) vs (0, 1) -> tie, loss
    s = stats.paired_comparison([[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]])
    assert (s["win"], s["tie"], s["loss"]) == (0.25, 0.5, 0.25)
    # per-prompt win rates (1 + 1/2) / 2 = 0.75 and (1/2 + 0) / 2 = 0.25 -> 0.5
    assert s["win_rate"] == pytest.approx(0.5)
    # per-prompt gains 0.5 - 0 = 0.5 and 0 - 0.5 = -0.5: mean 0, SE = std(0.5, -0.5) / sqrt(2) = 0.7071 / 1.4142
    assert s["gain"] == pytest.approx(0.0) and s["gain_se"] == pytest.approx(0.5)
    assert s["policy_reward"] == pytest.approx(0.25) and s["reference_reward"] == pytest.approx(0.25)


def test_bootstrap_interval_hand_cases():
    # two prompts with per-prompt values 0.75 and 0.25: a resample of 2 prompts has mean 0.25 (both the second),
    # 0.5 or 0.75 with probabilities 1/4, 1/2, 1/4; with 2000 resamples the 2.5% and 97.5% quantiles are the
    # two extremes (each holds ~500 draws, far more than the 50 below / above those quantiles)
    assert stats.bootstrap_ci([0.75, 0.25], 2000, seed=0) == [0.25, 0.75]
    assert stats.bootstrap_ci([0.3] * 7, 100, seed=0) == pytest.approx([0.3, 0.3])       # no spread
    assert stats.bootstrap_ci([1.0, 2.0, 4.0], 50, seed=5) == stats.bootstrap_ci([1.0, 2.0, 4.0], 50, seed=5)
    # many prompts: the interval's half-width is close to 1.96 standard errors of the mean
    x = torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = stats.bootstrap_ci(x, 4000, seed=2)
    se = (x.std() / math.sqrt(400)).item()
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.08)
    s = stats.paired_comparison([[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]], bootstrap=2000)
    assert s["win_rate_ci"] == [0.25, 0.75]                 # per-prompt win rates 0.75, 0.25 (see above)
    assert s["gain_ci"] == [-0.5, 0.5]                      # per-prompt gains 0.5, -0.5


def test_two_way_bootstrap_against_its_exact_distribution():
    # a (2 seeds, 2 prompts) table: every (seed draw, prompt draw) is one of 4 x 4 equally likely outcomes, so the
    # resampled mean has an exact distribution; 20,000 resamples must reproduce its quantiles and its mean
    import itertools
    x = [[0.0, 1.0], [2.0, 5.0]]
    exact = sorted(sum(x[s][p] for s in ss for p in pp) / 4
                   for ss in itertools.product(range(2), repeat=2) for pp in itertools.product(range(2), repeat=2))
    m, (lo, hi) = stats.bootstrap_seeds_prompts(x, resamples=20000, seed=3)
    assert m == 2.0
    # the exact 2.5% / 97.5% quantiles of 16 equally likely values: 0.0 (1 of 16 = 6%) and 5.0 (1 of 16)
    assert exact[0] == 0.0 and exact[-1] == 5.0 and lo == 0.0 and hi == 5.0
    # the seed draws alone: constant rows give the seed-resampled mean its 3 values, 1 and 3 each 1 / 4
    m, (lo, hi) = stats.bootstrap_seeds_prompts([[1.0] * 5, [3.0] * 5], resamples=4000)
    assert (m, lo, hi) == (2.0, 1.0, 3.0)
    # the prompt draws alone: identical rows, so only the prompts vary; the interval is the prompt bootstrap's
    row = [0.0, 0.0, 1.0, 4.0]
    _, ci = stats.bootstrap_seeds_prompts([row, row, row], resamples=3000, seed=1)
    draws = stats.seed_prompt_draws(3, 4, 3000, 1)[1]                               # the same prompt draws
    means = torch.tensor(row, dtype=torch.float64)[draws].mean(1)
    assert ci == torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()


def test_isotonic_fit_hand_cases_and_brute_force():
    import itertools
    import random
    xs, f = stats.isotonic([1, 2, 3], [1, 3, 2])
    assert xs == [1, 2, 3] and f == [1, 2.5, 2.5]                                  # the violating pair pooled
    assert stats.isotonic([1, 2, 3], [1, 3, 2], w=[1, 1, 3])[1] == [1, 2.25, 2.25]  # (3 + 3 * 2) / 4
    assert stats.isotonic([3, 1, 2], [2, 1, 3])[1] == [1, 2.5, 2.5]             # unsorted input: sorted by x
    # brute force: the least-squares non-decreasing fit is constant on blocks of consecutive points; among all
    # partitions into blocks whose means do not decrease, it is the one of smallest squared error
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 7)
        y = [rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]) for _ in range(n)]
        best = None
        for cuts in itertools.product([0, 1], repeat=n - 1):
            blocks, cur = [], [y[0]]
            for c, v in zip(cuts, y[1:]):
                if c:
                    blocks.append(cur)
                    cur = [v]
                else:
                    cur.append(v)
            blocks.append(cur)
            means = [sum(b) / len(b) for b in blocks]
            if any(a > b + 1e-12 for a, b in zip(means, means[1:])):
                continue
            sse = sum((v - mu) ** 2 for b, mu in zip(blocks, means) for v in b)
            if best is None or sse < best[0] - 1e-12:
                best = (sse, [mu for b, mu in zip(blocks, means) for _ in b])
        fitted = stats.isotonic(list(range(n)), y)[1]
        assert fitted == pytest.approx(best[1], abs=1e-12)


def test_frontier_reads_the_fit_between_points_and_nothing_outside():
    kl, gain = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]                            # fit: (1, 1), (2, 2.5), (3, 2.5)
    at = stats.frontier_at(kl, gain, [0.5, 1.0, 1.5, 2.0, 3.0, 3.5])
    assert math.isnan(at[0]) and math.isnan(at[-1])                          # outside the runs' KL: no value
    assert at[1:5] == [1.0, 1.75, 2.5, 2.5]


def test_identical_samples_give_half_win_rate_and_all_ties():
    g = torch.randn(5, 3).tolist()
    s = stats.paired_comparison(g, g)
    assert s["win_rate"] == 0.5 and s["tie"] == 1.0 and s["gain"] == 0.0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_comparison([[1.0, 2.0]], [[1.0]])


def test_monte_carlo_kl_matches_closed_form():
    # p = (0.7, 0.2, 0.1), q = (0.2, 0.3, 0.5): KL(p||q) = sum p log(p/q)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum().item()                    # = 0.7 ln 3.5 + 0.2 ln(2/3) + 0.1 ln 0.2 = 0.6349
    assert exact == pytest.approx(0.7 * math.log(3.5) + 0.2 * math.log(2 / 3) + 0.1 * math.log(0.2))
    y = torch.multinomial(p, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    est, se = stats.monte_carlo_kl(p.log()[y], q.log()[y])
    assert abs(est - exact) < 4 * se and se < 0.02
    assert stats.monte_carlo_kl(p.log()[y], p.log()[y]) == (0.0, 0.0)


def test_repetition_stats_hand_computed():
    # "a b a b a": bigrams ab, ba, ab, ba -> 2 distinct of 4 = 0.5; trigrams aba, bab, aba -> "aba" repeats
    # "x y z": bigrams xy, yz -> 1.0; trigrams xyz once -> no repeat;  "w": no bigram -> counted as 1.0, no repeat
    s = stats.repetition_stats(["a b a b a", "x y z", "w"])
    assert s["distinct2"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert s["repetition"] == pytest.approx(1 / 3)


def test_rows_mask_the_completion_only():
    b = tokenization.collate_completions([([2, 5], [7, 1]), ([2], [9, 9, 1])], pad_token_id=0)
    assert b["input_ids"].tolist() == [[2, 5, 7, 1], [2, 9, 9, 1]]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.fixture
def task(tiny_task):
    return tiny_task


def test_end_to_end_reference_against_itself_and_a_trained_policy(task, tmp_path):
    import train
    train.main(["--method", "dpo", "--data", "embedded-tiny", "--lr", "3e-3", "--epochs", "3", "--no-final_check",
                "--eval_every", "0", "--out", str(tmp_path / "dpo")])
    out = tmp_path / "eval"
    res = evaluate.main(["--data", "embedded-tiny", "--policies", f"{task['reference']},{tmp_path / 'dpo'}",
                         "--names", "same,dpo",
                         "--prompts", "16", "--samples", "4", "--temperatures", "0,1", "--out", str(out)])
    for set_name in ("in_distribution", "out_of_distribution"):
        for temp in ("T=0", "T=1"):
            same = res["sets"][set_name][temp]["policies"]["same"]
            # pi_ref evaluated as a policy: the same samples (same seed), so KL is exactly 0, every pair a tie
            assert same["tie"] == 1.0 and same["win_rate"] == 0.5
            assert same["kl"] == 0.0 if temp == "T=1" else math.isnan(same["kl"])   # greedy samples: no KL
            dpo = res["sets"][set_name][temp]["policies"]["dpo"]
            assert dpo["win"] + dpo["tie"] + dpo["loss"] == pytest.approx(1.0)
            assert "same vs dpo" in res["sets"][set_name][temp]["head_to_head"]
    assert res["sets"]["in_distribution"]["T=0"]["policies"]["dpo"]["samples_per_prompt"] == 1   # greedy: 1
    assert res["preference_accuracy"]["same"]["accuracy"] == 0.5                 # h = 0 on every pair
    assert res["judge"]["kind"] == "gold" and "oracle_reward" in res["sets"]["in_distribution"]["T=1"]["policies"]["dpo"]
    # the trained policy has moved away from pi_ref: its Monte-Carlo KL on its own samples is positive (by
    # more than 2 standard errors). (Its held-out preference accuracy is NOT asserted > 0.5: on the tiny task's
    # 20 held-out pairs it measured 0.45-0.65 over seeds 0-3 while being 1.0 on its 33 training pairs.)
    for set_name in ("in_distribution", "out_of_distribution"):
        dpo = res["sets"][set_name]["T=1"]["policies"]["dpo"]
        assert dpo["kl"] > 2 * dpo["kl_se"] > 0
        # gain and its paired standard error, recomputed by hand from the per-prompt mean gold of both
        ref = res["sets"][set_name]["T=1"]["policies"]["pi_ref"]["reward_per_prompt"]
        d = [a - b for a, b in zip(dpo["reward_per_prompt"], ref)]
        mean = sum(d) / len(d)
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
        assert len(d) == 16 and dpo["gain"] == pytest.approx(mean, abs=1e-12)
        assert dpo["gain_se"] == pytest.approx(se, rel=1e-9)
        # KL per prompt (4 samples each): their mean is the KL over all samples; pi_ref against itself: all 0
        assert sum(dpo["kl_per_prompt"]) / 16 == pytest.approx(dpo["kl"], rel=1e-9)
        assert res["sets"][set_name]["T=1"]["policies"]["same"]["kl_per_prompt"] == [0.0] * 16
    assert json.loads((out / "results.json").read_text())["config"]["names"] == "same,dpo"
    assert (out / "in_distribution.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    ([], "at least one trained policy"),
    (["--policies", "no/such/run"], "no/such/run is not a directory"),
    (["--policies", ".", "--samples", "0"], r"--samples must be in \[1, inf\); got 0"),
    (["--policies", ".", "--prompts", "-3"], r"--prompts must be in \[1, inf\)"),
    (["--policies", ".", "--temperatures", "0,-1"], r"--temperatures must be comma-separated numbers >= 0"),
    (["--policies", ".", "--temperatures", "hot"], r"--temperatures must be .* got 'hot'"),
])
def test_bad_inputs_are_one_clear_error_and_write_nothing(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        evaluate.main(["--data", "embedded-tiny", "--out", str(tmp_path / "eval"), *args])
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------------------
# Any preference data, judged by reward models (tiny ones built here)
# ------------------------------------------------------------------------------------------------------------
def tiny_llama_dir(path, tok, seed, head=False):
    """A random tiny Llama saved with `tok`; with `head`, a random reward head too (our Oracle format) and its
    sequence-classification export in <path>/seqcls."""
    import models
    from test_models import tiny_llama
    model = tiny_llama(len(tok.get_vocab()), seed=seed)
    if head:
        torch.nn.init.normal_(model.reward_head.weight)
    else:
        del model.reward_head
    models.save_model(model, tok, str(path))
    if head:
        oracle.save_seqcls(model, tok, str(path / "seqcls"))
    return str(path)


@pytest.fixture(scope="module")
def conversational(tmp_path_factory):
    """A conversational JSONL file (30 pairs, 30 distinct prompts), pi_ref, another policy, an Oracle-format
    reward model with its seq-cls export, and a classifier with a different (OPT-like) tokenizer."""
    import itertools

    import test_tokenization as tt
    from transformers import OPTConfig, OPTForSequenceClassification
    root = tmp_path_factory.mktemp("conversational")
    words = ["q", "a", "b", "c"]
    rows = [{"prompt": [{"role": "user", "content": " ".join(w)}], "chosen": [{"role": "assistant", "content": "a b"}],
             "rejected": [{"role": "assistant", "content": "c"}]} for w in itertools.product(words, repeat=3)][:30]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tt.smollm2_like()
    torch.manual_seed(3)
    opt_tok = tt.opt_like()
    opt_rm = OPTForSequenceClassification(OPTConfig(
        vocab_size=len(tt.OPT_VOCAB), hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
        max_position_embeddings=64, word_embed_proj_dim=16, num_labels=1, pad_token_id=0, bos_token_id=14,
        eos_token_id=1, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)).eval()
    opt_rm.save_pretrained(root / "opt_rm")
    opt_tok.save_pretrained(root / "opt_rm")
    return {"data": str(root / "pairs.jsonl"), "ref": tiny_llama_dir(root / "ref", tok, 0),
            "other": tiny_llama_dir(root / "other", tok, 1), "rm": tiny_llama_dir(root / "rm", tok, 2, head=True),
            "opt_rm": str(root / "opt_rm"), "root": root}


def run_eval(c, tmp_path, judge, *extra):
    return evaluate.main(["--data", c["data"], "--reference", c["ref"], "--policies", f"{c['ref']},{c['other']}",
                          "--names", "same,other", "--judge", judge, "--prompts", "3", "--samples", "4",
                          "--temperatures", "1", "--max_new_tokens", "6", "--bootstrap", "500",
                          "--out", str(tmp_path / judge.replace("/", "_")), *extra])


def test_any_data_judged_by_a_reward_model_with_hand_checked_statistics(conversational, tmp_path, capsys):
    c = conversational
    res = run_eval(c, tmp_path, os.path.join(c["rm"], "seqcls"))
    row = res["sets"]["in_distribution"]["T=1"]
    assert list(res["sets"]) == ["in_distribution"] and res["judge"]["kind"] == "classifier"
    assert res["judge"]["circular_for"] == ["drdo", "distill", "edpo"]        # an Oracle's export is that Oracle
    same, other = row["policies"]["same"], row["policies"]["other"]
    # pi_ref against itself: the same samples, so every pair ties, KL is 0 and the interval has no width
    assert same["tie"] == 1.0 and same["win_rate"] == 0.5 and same["kl"] == 0.0 and same["gain_ci"] == [0.0, 0.0]
    # the other policy: every statistic recomputed by hand from the per-sample rewards (P = 3 prompts, n = 4)
    a, b = other["rewards"], row["policies"]["pi_ref"]["rewards"]
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    assert len(a) == 3 and all(len(r) == 4 for r in a)
    assert other["win"] == pytest.approx(sum(x > y for x, y in pairs) / 12)
    assert other["tie"] == pytest.approx(sum(x == y for x, y in pairs) / 12)
    wr = [sum((x > y) + 0.5 * (x == y) for x, y in zip(ra, rb)) / 4 for ra, rb in zip(a, b)]
    gains = [sum(ra) / 4 - sum(rb) / 4 for ra, rb in zip(a, b)]
    sd = (lambda v: math.sqrt(sum((x - sum(v) / 3) ** 2 for x in v) / 2))
    assert other["win_rate"] == pytest.approx(sum(wr) / 3) and other["win_rate_se"] == pytest.approx(sd(wr) / math.sqrt(3))
    assert other["gain"] == pytest.approx(sum(gains) / 3) and other["gain_se"] == pytest.approx(sd(gains) / math.sqrt(3))
    assert min(gains) <= other["gain_ci"][0] <= other["gain"] <= other["gain_ci"][1] <= max(gains)
    assert other["kl"] == other["kl"] and "same vs other" in row["head_to_head"]
    # the same samples judged by the Oracle itself (its own format, attention-mask pooling) give the rewards of
    # its seq-cls export (HF's pad-id pooling), sample by sample, and the output says the judge is circular
    capsys.readouterr()
    res_o = run_eval(c, tmp_path, "oracle", "--oracle", c["rm"])
    assert res_o["judge"]["kind"] == "oracle" and res_o["judge"]["circular_for"] == ["drdo", "distill", "edpo"]
    assert "CIRCULAR for DRDO" in capsys.readouterr().out
    for name in ("pi_ref", "other"):
        torch.testing.assert_close(torch.tensor(res_o["sets"]["in_distribution"]["T=1"]["policies"][name]["rewards"]),
                                   torch.tensor(row["policies"][name]["rewards"]), atol=1e-5, rtol=0)


def test_a_judge_with_another_tokenizer_reads_the_text_in_its_own_format(conversational, tmp_path):
    # the OPT-like classifier has no chat template: it must read <s> "User: <prompt>\n\nAssistant:" then the
    # completion's words and EOS, with its own ids (written out here from its vocabulary, not by tokenization.py)
    import re

    import test_tokenization as tt
    from transformers import AutoModelForSequenceClassification
    c = conversational
    res = run_eval(c, tmp_path, c["opt_rm"])
    assert res["judge"]["circular_for"] == [] and "independent" in res["judge"]["note"]
    pol = res["sets"]["in_distribution"]["T=1"]["policies"]["other"]
    prompts = evaluate.held_out_prompts(__import__("data").load_splits(c["data"], log=lambda *_: None)[1], 3)
    rm = AutoModelForSequenceClassification.from_pretrained(c["opt_rm"]).eval()
    V = tt.OPT_VOCAB
    for k in range(3):
        for j in (0, 3):
            text = pol["samples"][k][j]
            words = ["User:"] + prompts[k][0]["content"].split() + ["\n", "\n", "Assistant:"] + re.findall(r"\n|[^ \n]+", text)
            ids = [V["<s>"]] + [V.get(w, V["<unk>"]) for w in words] + [V["<eos>"]]
            with torch.no_grad():
                expected = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
            assert pol["rewards"][k][j] == pytest.approx(expected, abs=1e-5)


def test_other_data_needs_a_reference_and_has_no_gold(conversational, tmp_path):
    c = conversational
    with pytest.raises(SystemExit, match="--reference: name pi_ref"):
        evaluate.main(["--data", c["data"], "--policies", c["other"], "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="--judge gold needs a gold reward"):
        evaluate.main(["--data", c["data"], "--reference", c["ref"], "--policies", c["other"], "--judge", "gold",
                       "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="--judge no/such/model: not 'gold', 'oracle', or a reward model"):
        evaluate.main(["--data", c["data"], "--reference", c["ref"], "--policies", c["other"], "--judge", "no/such/model",
                       "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


def test_an_encoder_judge_without_eos_reads_prompt_and_completion_as_a_text_pair(tmp_path):
    # a BERT-like classifier (as all-MiniLM-L6-v2 would be): no EOS, its tokenizer builds "[CLS] a [SEP] b [SEP]";
    # the prompt is rendered in the fallback format, the completion is the second text, ids written out here
    import judges
    import test_tokenization as tt
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "User:": 4, "Assistant:": 5, "q": 6, "a": 7, "b": 8}
    t = Tokenizer(tmodels.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                     special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]")
    torch.manual_seed(0)
    rm = BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32, num_labels=1,
                                                  pad_token_id=0, max_position_embeddings=32,
                                                  initializer_range=0.5)).eval()
    torch.nn.init.normal_(rm.classifier.weight, std=10.0)      # rewards far apart, so a wrong input shows
    judge = judges.RewardModelJudge(rm, tok, tt.smollm2_like(), "classifier", "bert")
    prompts = [[{"role": "user", "content": "q a"}], "q"]
    texts = [["a b", "b"], ["a", "b b a"]]
    rewards = judge.rewards(prompts, texts, [([], [])] * 4)
    expected_ids = [[2, 4, 6, 7, 5, 3, 7, 8, 3],        # [CLS] User: q a Assistant: [SEP] a b [SEP]
                    [2, 4, 6, 7, 5, 3, 8, 3],           # ... [SEP] b [SEP]
                    [2, 6, 3, 7, 3],                    # [CLS] q [SEP] a [SEP]
                    [2, 6, 3, 8, 8, 7, 3]]              # [CLS] q [SEP] b b a [SEP]
    with torch.no_grad():
        expected = [rm(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in expected_ids]
    assert max(expected) - min(expected) > 0.01
    assert rewards[0] + rewards[1] == pytest.approx(expected, abs=1e-5)
