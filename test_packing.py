"""packing.py: the packed layout checked by hand on a small batch, and the packed forward equal to the plain one
(log-probs, every other output of models.batch_logps, the reward head, gradients) for OPT and Llama, sdpa and
eager attention, LoRA and gradient checkpointing; the cases where it must not pack; and through train.py:
packed = unpacked, gradient accumulation still exact, a stopped and resumed packed run identical."""
import pytest
import torch

import models
import packing
from losses import sequence_logps
from tokenization import collate, collate_completions
from train_test_helpers import metrics, run, weights

PAD = 1


def opt(attention="sdpa"):
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    m = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                                 word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=PAD,
                                 **models.NO_DROPOUT))
    m.set_attn_implementation(attention)
    return m


def llama(attention="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                     pad_token_id=PAD))
    m.set_attn_implementation(attention)
    return m


def pairs_batch():
    """Prompts of different lengths; pair 1's responses start with the same token (the shared prefix goes into the
    responses); pair 2's rejected equals its chosen (it owns no token of its own)."""
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 64, (n,), generator=g).tolist()          # noqa: E731
    c1, c3 = ids(4), ids(2)
    return collate([{"prompt_ids": ids(6), "chosen_ids": ids(3), "rejected_ids": ids(5)},
                    {"prompt_ids": ids(2), "chosen_ids": c1, "rejected_ids": c1[:1] + ids(2)},
                    {"prompt_ids": ids(9), "chosen_ids": c3, "rejected_ids": list(c3)},
                    {"prompt_ids": ids(3), "chosen_ids": ids(7), "rejected_ids": ids(1)}], PAD)


def group_batch():
    """K = 3 completions of 2 prompts, k-major (as tokenization.collate lays out BRAIn's groups)."""
    g = torch.Generator().manual_seed(2)
    ids = lambda n: torch.randint(3, 64, (n,), generator=g).tolist()          # noqa: E731
    prompts = [ids(5), ids(8)]
    return collate_completions([(p, ids(k + 2)) for k in range(3) for p in prompts], PAD)


# ------------------------------------------------------------------------------------------------------------
# The layout, by hand
# ------------------------------------------------------------------------------------------------------------
def test_one_pair_is_one_row_prompt_chosen_rejected():
    # prompt 5 6 7, chosen 8 9, rejected 10: one row [5 6 7 8 9 10]; rejected's 10 sits at position id 3 (right
    # after the prompt) and sees the prompt and itself, never 8 9
    batch = collate([{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]}], PAD)
    p = packing.plan(batch["input_ids"], batch["attention_mask"], prefix=True, rows=False)
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    assert p.where[0, :5].tolist() == [0, 1, 2, 3, 4] and p.where[1, :4].tolist() == [0, 1, 2, 5]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 0],
                             [1, 1, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(p.allowed[0], expected)
    # the eager form adds 0 where allowed and the dtype's minimum elsewhere
    m = p.mask("eager", torch.float32)[0, 0]
    assert torch.equal(m == 0, expected) and (m[~expected] == torch.finfo(torch.float32).min).all()


def test_rows_pack_without_padding_and_prefix_shares_the_prompt():
    # rows: chosen 0 = 5 6 7 8 9, chosen 1 = 11 13, rejected 0 = 5 6 7 10, rejected 1 = 11 14 (13 real of 4 x 5)
    batch = collate([{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]},
                     {"prompt_ids": [11], "chosen_ids": [13], "rejected_ids": [14]}], PAD)
    assert int(batch["attention_mask"].sum()) == 13 and batch["input_ids"].shape == (4, 5)
    # rows only: bins of 5 (the longest row), first fit by decreasing length: [5], [4], [2 + 2]
    rows = packing.plan(batch["input_ids"], batch["attention_mask"], prefix=False, rows=True, pad_id=PAD)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 10, PAD], [11, 13, 11, 14, PAD]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 0, 1, 0]]
    assert torch.equal(rows.allowed[2, :4, :4], torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]],
                                                             dtype=torch.bool))
    # both: a pair is a family of P + chosen + rejected tokens (6 and 3): bins of 6, no prompt twice
    both = packing.plan(batch["input_ids"], batch["attention_mask"], prefix=True, rows=True, pad_id=PAD)
    assert both.input_ids.tolist() == [[5, 6, 7, 8, 9, 10], [11, 13, 14, PAD, PAD, PAD]]
    assert both.position_ids[1].tolist() == [0, 1, 1, 0, 0, 0]


def test_the_parent_is_the_earlier_row_with_the_longest_common_prefix():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, PAD], [5, 6, 7, 9], [4, 6, 7, 8]])
    att = (ids != PAD).long()
    parent, shared = packing.shared_prefixes(ids, att.sum(1))
    assert parent.tolist() == [-1, 0, 0, -1] and shared.tolist() == [0, 2, 3, 0]


# ------------------------------------------------------------------------------------------------------------
# Packed = unpacked
# ------------------------------------------------------------------------------------------------------------
def outputs(model, batch, mode, full_logits=False):
    """Every output batch_logps can return, and the gradient of their sum, under `mode`."""
    models.PACKING, models.PACK_LOGITS = mode, not full_logits
    try:
        model.zero_grad()
        weights = torch.linspace(0.5, 1.5, batch["input_ids"].numel()).view_as(batch["input_ids"])
        out = models.batch_logps(model, batch, with_head=True, wpo=True, logits_mean=True, tail=True,
                                 token_weights=weights)
        sum(v.sum() for v in out.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in out.items()}, grads
    finally:
        models.PACKING, models.PACK_LOGITS = "off", True


def assert_grads_close(got, want):
    """Each parameter's gradient to 1e-5 of its largest entry (the summed outputs make gradients of ~100-1000,
    where fp32 summation order alone moves the last digits)."""
    assert want.keys() == got.keys() and len(want) > 0
    for k in want:
        assert (got[k] - want[k]).abs().max() <= 1e-5 * want[k].abs().max() + 1e-7, k


@pytest.mark.parametrize("make", [opt, llama])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["prefix", "rows", "both"])
def test_packed_forward_equals_the_plain_one(make, attention, mode):
    model = make(attention)
    models.add_reward_head(model)
    torch.nn.init.normal_(model.reward_head.weight)
    for batch in (pairs_batch(), group_batch()):
        want, want_grads = outputs(model, batch, "off")
        got, got_grads = outputs(model, batch, mode)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=k)
        assert_grads_close(got_grads, want_grads)


def test_packed_with_full_logits_lora_and_checkpointing_equals_the_plain_one():
    model = models.enable_gradient_checkpointing(models.add_lora(llama(), r=4)).train()
    for p in model.parameters():                                                # adapters away from the identity
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    model.add_module("reward_head", torch.nn.Linear(32, 1, bias=False))
    batch = pairs_batch()
    want, want_grads = outputs(model, batch, "off", full_logits=True)
    got, got_grads = outputs(model, batch, "both", full_logits=True)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=k)
    assert len(want_grads) > 0 and all(k.find("lora_") >= 0 or k.startswith("reward") for k in want_grads)
    assert_grads_close(got_grads, want_grads)


@pytest.mark.parametrize("broken", ["causal mask over the packed row", "positions along the packed row"])
def test_a_broken_mask_or_position_is_caught(monkeypatch, broken):
    # the equality above fails if a rejected token can see its chosen one, or if positions do not restart
    model, batch = models.add_reward_head(opt()), pairs_batch()
    want, _ = outputs(model, batch, "off")
    plan = packing.plan

    def broken_plan(*args, **kwargs):
        p = plan(*args, **kwargs)
        R, L = p.input_ids.shape
        if broken.startswith("causal"):
            return packing.Plan(p.input_ids, p.position_ids, torch.ones_like(p.allowed).tril(), p.where, p.lengths)
        return packing.Plan(p.input_ids, torch.arange(L).repeat(R, 1), p.allowed, p.where, p.lengths)
    monkeypatch.setattr(packing, "plan", broken_plan)
    got, _ = outputs(model, batch, "prefix")
    assert (got["logps"] - want["logps"]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------------------
# Where it does not pack: the plain forward runs, and says why once
# ------------------------------------------------------------------------------------------------------------
def test_left_padded_rows_and_prefix_under_flash_attention_run_unpacked(capsys):
    model = opt()
    left = {k: v.flip(-1) for k, v in pairs_batch().items()}                   # left-padded rows
    right = pairs_batch()["attention_mask"]
    try:
        models.PACKING = "both"
        assert not models.packable(model, left["attention_mask"]) and models.packable(model, right)
        model.config._attn_implementation = "flash_attention_2"
        assert models.packable(model, right)                                    # rows only, through varlen
        models.PACKING = "prefix"
        assert not models.packable(model, right)
        model.config._attn_implementation = "flex_attention"
        assert not models.packable(model, right)
    finally:
        models.PACKING = "off"
        model.config._attn_implementation = "sdpa"
    said = capsys.readouterr().out
    assert "left-padded" in said and "padding-free rows only" in said and "has no shared prefix" in said
    assert "'flex_attention' takes no 4D mask" in said


def test_the_varlen_rows_of_flash_attention_equal_the_plain_forward():
    # flash attention gets one row, no mask, position ids restarting at 0 per sequence. On the CPU, Llama's sdpa
    # reads the same inputs as separate sequences (transformers' packed-sequence detection), which checks the
    # layout and the position ids that the flash kernel's varlen path receives (the kernel itself needs a GPU)
    model, batch = models.add_reward_head(llama()), pairs_batch()
    want = models.batch_logps(model, batch, with_head=True)
    ids, att, keep = batch["input_ids"], batch["attention_mask"], models.completion_mask(batch["loss_mask"])
    logits, last = packing.packed_forward(model, ids, att, keep, "both", "flash_attention_2", torch.float32,
                                          packs_logits=True, output_hidden_states=True, pad_id=PAD)
    got = sequence_logps(logits, ids, batch["loss_mask"])
    torch.testing.assert_close(got, want["logps"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.reward_head(last).squeeze(-1), want["head"], atol=1e-5, rtol=1e-5)
    p = packing.plan(ids, att, prefix=False, rows=True, one_row=True, pad_id=PAD)
    assert p.input_ids.shape == (1, int(att.sum())) and p.allowed is None        # every real token, once, no pad


# ------------------------------------------------------------------------------------------------------------
# Through train.py
# ------------------------------------------------------------------------------------------------------------
def test_packed_training_equals_unpacked_and_accumulation_stays_exact(cache, tmp_path):
    args = ["--method", "dpo", "--batch_size", "4", "--epochs", "0.5", "--lr", "1e-3"]
    run(tmp_path, *args, "--micro_batch_size", "4", name="plain")
    run(tmp_path, *args, "--micro_batch_size", "4", "--packing", "both", name="packed")
    run(tmp_path, *args, "--micro_batch_size", "1", "--packing", "both", name="packed-accum")
    plain = metrics(tmp_path, "plain")
    assert len(plain) >= 4
    for name in ("packed", "packed-accum"):
        for a, b in zip(metrics(tmp_path, name), plain):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        wa, wb = weights(tmp_path, name), weights(tmp_path, "plain")
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
