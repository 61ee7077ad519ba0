"""Tests of tokenization.py on tokenizers built here with hand-picked ids, one per case a real model brings:
no chat template and no BOS (GPT-2), no template with a BOS the tokenizer adds (OPT), ChatML with
"<|im_end|>\n" whose end-of-turn is the EOS (SmolLM2, Qwen-Instruct), ChatML whose end-of-turn is not the EOS
(Qwen base), and a template that writes BOS while the tokenizer also adds it (Llama-3). Expected ids are
written out row by row. Also: truncation, drops, collation. A few seconds.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tokenization  # noqa: E402


def word_tokenizer(vocab, *, eos, pad, bos=None, unk=None, specials=(), template=None, post_bos=None):
    """A word-level PreTrainedTokenizerFast: words split at spaces, each newline its own token, every name in
    `specials` (and eos / pad / bos / unk) a special token with its id from `vocab`; `post_bos`: a BOS the
    post-processor prepends (as Llama's and OPT's tokenizers do); `template`: its chat_template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab, unk_token=unk or eos))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(" +"), "removed"),
                                               pre_tokenizers.Split("\n", "isolated")])
    if post_bos:
        t.post_processor = processors.TemplateProcessing(single=f"{post_bos} $A", special_tokens=[(post_bos, vocab[post_bos])])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token=eos, pad_token=pad, bos_token=bos, unk_token=unk,
                                  additional_special_tokens=list(specials))
    tok.chat_template = template
    return tok


# A word-level vocabulary with hand-picked ids, so expected tensors can be written out by hand.
VOCAB = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "q": 3, "a": 4, "b": 5, "c": 6, "d": 7, "x": 8, "y": 9}
# OPT-like: no chat template (the fallback format renders messages), BOS "<s>" added by the tokenizer.
OPT_VOCAB = {**VOCAB, "\n": 10, "User:": 11, "Assistant:": 12, "System:": 13, "<s>": 14}
# ChatML (SmolLM2 / Qwen): "<|im_start|>role\ncontent<|im_end|>\n" per message, "<|im_start|>assistant\n" to answer.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHATML_VOCAB = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "\n": 3, "system": 4, "user": 5,
                "assistant": 6, "q": 7, "a": 8, "b": 9, "c": 10, "Be": 11, "brief.": 12}
# Llama-3: the template writes BOS, the tokenizer's post-processor prepends it too; turns end with <|eot_id|>.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
          "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
LLAMA3_VOCAB = {"<|begin_of_text|>": 0, "<|eot_id|>": 1, "<|start_header_id|>": 2, "<|end_header_id|>": 3, "\n": 4,
                "user": 5, "assistant": 6, "q": 7, "a": 8, "b": 9, "<pad>": 10}


def opt_like():
    return word_tokenizer(OPT_VOCAB, eos="<eos>", pad="<pad>", unk="<unk>", bos="<s>", post_bos="<s>")


def smollm2_like():
    """ChatML whose end-of-turn <|im_end|> is also EOS and pad, <|im_start|> is BOS (as SmolLM2-135M-Instruct)."""
    return word_tokenizer(CHATML_VOCAB, eos="<|im_end|>", pad="<|im_end|>", bos="<|im_start|>", unk="<|endoftext|>",
                          template=CHATML)


def qwen_base_like():
    """ChatML whose EOS is <|endoftext|>: the end-of-turn <|im_end|> is another special token."""
    return word_tokenizer(CHATML_VOCAB, eos="<|endoftext|>", pad="<|endoftext|>", specials=["<|im_start|>", "<|im_end|>"],
                          template=CHATML)


def llama3_like():
    return word_tokenizer(LLAMA3_VOCAB, eos="<|eot_id|>", pad="<pad>", bos="<|begin_of_text|>",
                          specials=["<|start_header_id|>", "<|end_header_id|>"], template=LLAMA3,
                          post_bos="<|begin_of_text|>")


USER_Q = [{"role": "user", "content": "q"}]
CONVERSATION = {"prompt": USER_Q, "chosen": [{"role": "assistant", "content": "a b"}],
                "rejected": [{"role": "assistant", "content": "c"}]}


@pytest.fixture(scope="module")
def tok():
    """GPT-2-like: no chat template, no BOS."""
    return word_tokenizer(VOCAB, eos="<eos>", pad="<pad>", unk="<unk>")


# ------------------------------------------------------------------------------------------------------------
# Tokenization
# ------------------------------------------------------------------------------------------------------------
def test_tokenize_pair_concatenates_ids_with_one_eos(tok):
    out, reason = tokenization.tokenize_pair(tok, {"prompt": "q x", "chosen": "a b", "rejected": "c <eos> <eos>"})
    assert reason is None
    assert out["prompt_ids"] == [3, 8]                 # "q x"
    assert out["chosen_ids"] == [4, 5, 1]              # "a b" + one EOS
    assert out["rejected_ids"] == [6, 1]               # trailing EOS tokens collapse to exactly one


def test_tokenize_pair_truncates_prompt_end_first_then_responses(tok):
    record = {"prompt": "q a b c d x", "chosen": "a b c", "rejected": "d"}
    # max_length 6, max_prompt_length 2: prompt 6 + chosen 4 > 6 -> prompt keeps its last 2 ids [7, 8];
    # room for a response = 6 - 2 - 1 (EOS) = 3 -> chosen [4, 5, 6] fits, then EOS
    out, _ = tokenization.tokenize_pair(tok, record, max_length=6, max_prompt_length=2)
    assert out["prompt_ids"] == [7, 8]
    assert out["chosen_ids"] == [4, 5, 6, 1]
    assert out["rejected_ids"] == [7, 1]
    # max_length 5: room 2 -> chosen cut to its first 2 tokens, EOS kept
    out, _ = tokenization.tokenize_pair(tok, record, max_length=5, max_prompt_length=2)
    assert out["chosen_ids"] == [4, 5, 1] and len(out["prompt_ids"]) + len(out["chosen_ids"]) == 5


def test_a_gold_response_is_tokenized_like_the_others_and_collated_as_its_own_rows(tok):
    # TPO: gold "a b c" -> [4, 5, 6] + EOS; it is the longest response, so with max_length 6 it sets the cut:
    # prompt "q x" (2) + gold 4 = 6 fits; at max_length 5 the room is 5 - 2 - 1 = 2 -> [4, 5, EOS]
    record = {"prompt": "q x", "chosen": "a b", "rejected": "c", "gold_response": "a b c"}
    out, _ = tokenization.tokenize_pair(tok, record, max_length=6, max_prompt_length=2)
    assert out["gold_ids"] == [4, 5, 6, 1] and out["chosen_ids"] == [4, 5, 1]
    out, _ = tokenization.tokenize_pair(tok, record, max_length=5, max_prompt_length=2)
    assert out["gold_ids"] == [4, 5, 1]
    # collated: B gold rows after the 2B pair rows' batch, prompt masked out
    batch = tokenization.collate([out, out], pad_token_id=0)
    assert batch["gold_input_ids"].tolist() == [[3, 8, 4, 5, 1]] * 2
    assert batch["gold_loss_mask"].tolist() == [[0, 0, 1, 1, 1]] * 2
    assert "gold_input_ids" not in tokenization.collate([{k: v for k, v in out.items() if k != "gold_ids"}], 0)


def test_a_groups_responses_are_tokenized_and_collated_k_major(tok):
    # BRAIn: each of the K responses closed by one EOS; collated as K * B rows, response k of every record first
    record = {"prompt": "q", "chosen": "a", "rejected": "c", "responses": ["a b", "c", "a"]}
    out, _ = tokenization.tokenize_pair(tok, record)
    assert out["responses_ids"] == [[4, 5, 1], [6, 1], [4, 1]]
    other = dict(out, prompt_ids=[8])
    batch = tokenization.collate([out, other], pad_token_id=0)
    assert batch["group_input_ids"].tolist() == [[3, 4, 5, 1], [8, 4, 5, 1], [3, 6, 1, 0], [8, 6, 1, 0],
                                                 [3, 4, 1, 0], [8, 4, 1, 0]]
    assert batch["group_loss_mask"][2].tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="same number of responses"):
        tokenization.collate([out, dict(out, responses_ids=out["responses_ids"][:2])], 0)


def test_tokenize_pair_drops_empty_and_identical(tok):
    assert tokenization.tokenize_pair(tok, {"prompt": "q", "chosen": "", "rejected": "a"}) == (None, "empty response")
    assert tokenization.tokenize_pair(tok, {"prompt": "q", "chosen": "a b", "rejected": "a b"}) == \
        (None, "chosen equals rejected")
    # identical only after truncation: "a b c" vs "a b d" with room for 2 tokens
    rec = {"prompt": "q", "chosen": "a b c", "rejected": "a b d"}
    assert tokenization.tokenize_pair(tok, rec, max_length=4, max_prompt_length=1) == (None, "chosen equals rejected")


def test_tokenize_dataset_counts_drops(tok):
    ds = datasets.Dataset.from_list([
        {"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 1.0, "rejected_score": 0.0},
        {"prompt": "q", "chosen": "a", "rejected": "a", "chosen_score": 1.0, "rejected_score": 1.0},
        {"prompt": "q", "chosen": "", "rejected": "b", "chosen_score": 0.5, "rejected_score": 0.0},
    ])
    logged = []
    examples, dropped = tokenization.tokenize_dataset(tok, ds, log=logged.append)
    assert len(examples) == 1 and examples[0]["chosen_score"] == 1.0
    assert dropped == {"chosen equals rejected": 1, "empty response": 1}
    assert "kept 1 of 3" in logged[0]


def test_impossible_lengths_are_a_clear_error(tok):
    with pytest.raises(ValueError, match="leaves no room"):
        tokenization.tokenize_pair(tok, {"prompt": "q a b", "chosen": "c", "rejected": "d"}, max_length=3, max_prompt_length=2)


# ------------------------------------------------------------------------------------------------------------
# Collation
# ------------------------------------------------------------------------------------------------------------
def test_collate_stacks_chosen_then_rejected_right_padded():
    examples = [
        {"prompt_ids": [3, 8], "chosen_ids": [4, 5, 1], "rejected_ids": [6, 1], "chosen_score": 0.9, "rejected_score": 0.1},
        {"prompt_ids": [3], "chosen_ids": [7, 1], "rejected_ids": [9, 9, 9, 1], "chosen_score": 0.2, "rejected_score": 0.4},
    ]
    b = tokenization.collate(examples, pad_token_id=0)
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
    b = tokenization.collate(examples, pad_token_id=0)
    assert b["chosen_scores"].shape == (3, 2)
    torch.testing.assert_close(b["chosen_scores"][:, 0], torch.tensor([1.0, 2.0, 3.0]))




# ------------------------------------------------------------------------------------------------------------
# Chat templates, their absence, BOS and end-of-turn tokens (one tokenizer per case)
# ------------------------------------------------------------------------------------------------------------
def test_no_chat_template_falls_back_to_user_assistant_lines_with_one_bos():
    tok = opt_like()
    assert tokenization.render_prompt(tok, USER_Q) == "User: q\n\nAssistant:"
    out, _ = tokenization.tokenize_pair(tok, CONVERSATION)
    assert out["prompt_ids"] == [14, 11, 3, 10, 10, 12]   # <s> (added by the tokenizer) User: q \n \n Assistant:
    assert out["chosen_ids"] == [4, 5, 1]                 # " a b" + EOS
    assert out["rejected_ids"] == [6, 1]                  # " c" + EOS
    history = [{"role": "system", "content": "x"}, {"role": "user", "content": "q"},
               {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    out, _ = tokenization.tokenize_pair(tok, {**CONVERSATION, "prompt": history})
    assert out["prompt_ids"] == [14, 13, 8, 10, 10,       # <s> System: x \n \n
                                 11, 3, 10, 10,           # User: q \n \n
                                 12, 4, 10, 10,           # Assistant: a \n \n
                                 11, 5, 10, 10, 12]       # User: b \n \n Assistant:
    out, _ = tokenization.tokenize_pair(tok, {"prompt": "q x", "chosen": "a", "rejected": "b <eos>"})
    assert out["prompt_ids"] == [14, 3, 8]                # a string prompt: the tokenizer's BOS, once
    assert out["rejected_ids"] == [5, 1]
    assert tokenization.stop_token_ids(tok) == [1]


def test_chatml_whose_end_of_turn_is_eos_closes_each_response_once():
    tok = smollm2_like()
    out, _ = tokenization.tokenize_pair(tok, CONVERSATION)
    assert out["prompt_ids"] == [1, 5, 3, 7, 2, 3,        # <|im_start|> user \n q <|im_end|> \n
                                 1, 6, 3]                 # <|im_start|> assistant \n  (the header is the prompt's)
    assert out["chosen_ids"] == [8, 9, 2]                 # a b <|im_end|>  (not the template's "\n" after it)
    assert out["rejected_ids"] == [10, 2]                 # c <|im_end|>
    # the same ids as the whole conversation tokenized at once, minus the template's final "\n"
    full = tok.apply_chat_template(USER_Q + CONVERSATION["chosen"], tokenize=False)
    assert tok(full)["input_ids"] == out["prompt_ids"] + out["chosen_ids"] + [3]
    # a system turn; a response that already ends with the end-of-turn token: still exactly one
    system = [{"role": "system", "content": "Be brief."}] + USER_Q
    out, _ = tokenization.tokenize_pair(tok, {"prompt": system, "chosen": [{"role": "assistant", "content": "a b<|im_end|>"}],
                                              "rejected": [{"role": "assistant", "content": "c"}]})
    assert out["prompt_ids"] == [1, 4, 3, 11, 12, 2, 3,   # <|im_start|> system \n Be brief. <|im_end|> \n
                                 1, 5, 3, 7, 2, 3,        # <|im_start|> user \n q <|im_end|> \n
                                 1, 6, 3]                 # <|im_start|> assistant \n
    assert out["chosen_ids"] == [8, 9, 2]
    assert tokenization.stop_token_ids(tok) == [2]


def test_chatml_whose_end_of_turn_is_not_eos_closes_with_the_end_of_turn_only():
    tok = qwen_base_like()                                # EOS <|endoftext|> = 0, end-of-turn <|im_end|> = 2
    out, _ = tokenization.tokenize_pair(tok, CONVERSATION)
    assert out["prompt_ids"] == [1, 5, 3, 7, 2, 3, 1, 6, 3]
    assert out["chosen_ids"] == [8, 9, 2]                 # a b <|im_end|>, no EOS after it
    assert out["rejected_ids"] == [10, 2]
    # plain strings get EOS; an end-of-turn written in the text is kept as the closing token, not doubled
    out, _ = tokenization.tokenize_pair(tok, {"prompt": "q", "chosen": "a b", "rejected": "c <|im_end|>\n"})
    assert out["prompt_ids"] == [7]
    assert out["chosen_ids"] == [8, 9, 0]                 # a b <|endoftext|>
    assert out["rejected_ids"] == [10, 2]                 # c <|im_end|>
    assert tokenization.stop_token_ids(tok) == [0, 2]     # sampling stops at either


def test_template_that_writes_bos_while_the_tokenizer_adds_it_gives_one_bos():
    tok = llama3_like()
    record = {"prompt": USER_Q, "chosen": [{"role": "assistant", "content": "a b"}],
              "rejected": [{"role": "assistant", "content": "b"}]}
    out, _ = tokenization.tokenize_pair(tok, record)
    assert out["prompt_ids"] == [0,                       # <|begin_of_text|>, once
                                 2, 5, 3, 4, 4, 7, 1,     # <|start_header_id|> user <|end_header_id|> \n \n q <|eot_id|>
                                 2, 6, 3, 4, 4]           # <|start_header_id|> assistant <|end_header_id|> \n \n
    assert out["chosen_ids"] == [8, 9, 1]                 # a b <|eot_id|>
    assert out["rejected_ids"] == [9, 1]
    for prompt in ("q", "<|begin_of_text|> q", "<|begin_of_text|><|begin_of_text|>q"):
        assert tokenization.tokenize_pair(tok, {**record, "prompt": prompt})[0]["prompt_ids"] == [0, 7]
    # truncation keeps the BOS and the prompt's end: 17 prompt ids, max_prompt_length 6 -> BOS + last 5;
    # room for a response = 10 - 6 - 1 = 3 -> "a b" + <|eot_id|> fits
    long = {**record, "prompt": [{"role": "user", "content": "q q q q q"}]}
    out, _ = tokenization.tokenize_pair(tok, long, max_length=10, max_prompt_length=6)
    assert out["prompt_ids"] == [0, 2, 6, 3, 4, 4]
    assert out["chosen_ids"] == [8, 9, 1]
    assert tokenization.prompt_ids_for_sampling(tok, [USER_Q, long["prompt"]], 6) == [
        [0, 2, 6, 3, 4, 4],                              # 13 ids -> BOS + last 5
        [0, 2, 6, 3, 4, 4]]


def test_a_template_that_does_not_extend_its_prompt_is_a_clear_error():
    tok = smollm2_like()
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>{% endif %}")
    with pytest.raises(ValueError, match="pass prompt, chosen and rejected as plain strings"):
        tokenization.tokenize_pair(tok, CONVERSATION)
