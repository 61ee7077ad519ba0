"""Tests of sequence_logps (per-sequence log-probs from logits, every layout and dtype the models produce) and
of WPO's inputs and weights in losses.py, on hand-written logits.
"""
import math

import pytest
import torch

import losses as L
from losses import dpo_loss, sequence_logps
from loss_test_helpers import margin_inputs, t


# ------------------------------------------------------------------------------------------------------------
# sequence_logps
# ------------------------------------------------------------------------------------------------------------
def logits_from_probs(rows):
    """(B, T, V) logits whose log-softmax is log(p) exactly: logits = log p."""
    return torch.log(torch.tensor(rows, dtype=torch.float64))


A, Bq, C = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]   # next-token distributions over V = 3


def test_sequence_logps_hand_written_right_padding():
    # vocabulary {0, 1, 2}; T = 4; position t predicts token t+1
    logits = logits_from_probs([
        [A, Bq, C, A],      # row 0: prompt [0], completion [1, 2, 0]
        [A, A, C, Bq],      # row 1: prompt [2, 1], completion [2], then 1 pad (id 0)
    ])
    labels = torch.tensor([[0, 1, 2, 0],
                           [2, 1, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 1, 0]])
    # row 0: log A[1] + log Bq[2] + log C[0] = log 0.25 + log 0.25 + log 0.1
    # row 1: token 2 at t=2 is predicted at t=1 by A: log A[2] = log 0.25 (the pad and the last logit unused)
    row0 = math.log(0.25) + math.log(0.25) + math.log(0.1)
    row1 = math.log(0.25)
    torch.testing.assert_close(sequence_logps(logits, labels, mask), t(row0, row1))
    torch.testing.assert_close(sequence_logps(logits, labels, mask, average=True), t(row0 / 3, row1 / 1))


def test_sequence_logps_hand_written_left_padding():
    # the same row 1 as above, left-padded: [pad, 2, 1, 2]; mask [0, 0, 0, 1]
    logits = logits_from_probs([
        [C, C, A, A],       # the logits at the pad and prompt positions before t=2 are irrelevant
    ])
    labels = torch.tensor([[0, 2, 1, 2]])
    mask = torch.tensor([[0, 0, 0, 1]])
    # token 2 at t=3 is predicted at t=2 by A: log 0.25
    torch.testing.assert_close(sequence_logps(logits, labels, mask), t(math.log(0.25)))
    # a masked label of -100 (HF's ignore index) must not break the gather
    labels_ignore = torch.tensor([[-100, 2, 1, 2]])
    torch.testing.assert_close(sequence_logps(logits, labels_ignore, mask), t(math.log(0.25)))


def test_sequence_logps_three_rows_of_five():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1],    # right-aligned completion of 3
                         [0, 1, 1, 0, 0],    # completion of 2, then 2 pads
                         [0, 0, 0, 0, 1]])   # completion of 1 (last token)
    logp = torch.log_softmax(logits, -1)
    expected_sum = t(
        logp[0, 1, labels[0, 2]] + logp[0, 2, labels[0, 3]] + logp[0, 3, labels[0, 4]],
        logp[1, 0, labels[1, 1]] + logp[1, 1, labels[1, 2]],
        logp[2, 3, labels[2, 4]])
    torch.testing.assert_close(sequence_logps(logits, labels, mask), expected_sum)
    torch.testing.assert_close(sequence_logps(logits, labels, mask, average=True), expected_sum / t(3, 2, 1))


def test_sequence_logps_matches_plain_rederivation_on_random_inputs():
    g = torch.Generator().manual_seed(2)
    B, T, V = 4, 9, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.4).long()
    plain = (torch.log_softmax(logits[:, :-1], -1).gather(2, labels[:, 1:, None])[..., 0] * mask[:, 1:]).sum(-1)
    torch.testing.assert_close(sequence_logps(logits, labels, mask), plain)


def test_sequence_logps_bf16_path_matches_fp32_including_gradient():
    g = torch.Generator().manual_seed(3)
    logits16 = (torch.randn(3, 6, 13, generator=g) * 4).bfloat16().requires_grad_(True)
    logits32 = logits16.detach().float().requires_grad_(True)   # the same numbers, in fp32
    labels = torch.randint(0, 13, (3, 6), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    out16, out32 = sequence_logps(logits16, labels, mask), sequence_logps(logits32, labels, mask)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, out32, atol=1e-5, rtol=1e-5)
    (g16,) = torch.autograd.grad(out16.sum(), logits16)
    (g32,) = torch.autograd.grad(out32.sum(), logits32)
    torch.testing.assert_close(g16.float(), g32, atol=1e-2, rtol=1e-2)   # g16 is rounded to bf16


def test_sequence_logps_bf16_without_grad_takes_the_row_loop_and_matches_fp32():
    # the no-grad branch of the fp32 log-sum-exp (reference log-probs, evaluation): bf16 logits, no autograd
    g = torch.Generator().manual_seed(4)
    logits16 = (torch.randn(3, 6, 13, generator=g) * 4).bfloat16()
    labels = torch.randint(0, 13, (3, 6), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        out16 = sequence_logps(logits16, labels, mask)
    out32 = sequence_logps(logits16.float(), labels, mask)
    assert out16.dtype == torch.float32 and not out16.requires_grad
    torch.testing.assert_close(out16, out32, atol=1e-5, rtol=1e-5)


def test_sequence_wpo_logps_hand_written():
    # the rows of test_sequence_logps_hand_written_right_padding; per token log(p(y_t) / sum_v p(v)^2) with
    # sum p^2 = 0.375 for A and Bq (0.25 + 0.0625 + 0.0625) and 0.66 for C (0.01 + 0.01 + 0.64):
    # row 0: tokens 1, 2, 0 predicted by A, Bq, C: [log(0.25/0.375) + log(0.25/0.375) + log(0.1/0.66)] / 3
    # row 1: token 2 predicted by A: log(0.25/0.375) = log(2/3)
    logits = logits_from_probs([[A, Bq, C, A], [A, A, C, Bq]]).requires_grad_(True)
    labels = torch.tensor([[0, 1, 2, 0], [2, 1, 2, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    got = L.sequence_wpo_logps(logits, labels, mask)
    torch.testing.assert_close(got, t((2 * math.log(2 / 3) + math.log(0.1 / 0.66)) / 3, math.log(2 / 3)))
    assert not got.requires_grad                                       # detached: no graph is built
    # a uniform next-token distribution: p = 1/V = sum p^2 -> 0 for every token, whatever the logits' offset
    uniform = torch.full((2, 5, 7), 3.0, dtype=torch.float64)
    ids, ones = torch.randint(0, 7, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    torch.testing.assert_close(L.sequence_wpo_logps(uniform, ids, ones), t(0.0, 0.0))


def test_sequence_wpo_logps_matches_plain_rederivation_and_bf16():
    g = torch.Generator().manual_seed(4)
    B, T, V = 3, 8, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    p = torch.softmax(logits[:, :-1].double(), -1)                            # (B, T-1, V)
    per_token = torch.log(p.gather(2, labels[:, 1:, None])[..., 0] / (p ** 2).sum(-1))
    m = mask[:, 1:].double()
    plain = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)
    torch.testing.assert_close(L.sequence_wpo_logps(logits, labels, mask).double(), plain, atol=1e-5, rtol=1e-5)
    out16 = L.sequence_wpo_logps(logits.bfloat16(), labels, mask)
    assert out16.dtype == torch.float32
    out32 = L.sequence_wpo_logps(logits.bfloat16().float(), labels, mask)    # the same numbers, in fp32
    torch.testing.assert_close(out16, out32, atol=1e-5, rtol=1e-5)


def test_wpo_weights_closed_form_detach_and_clamp():
    # a(y_w) = log(2/3), a(y_l) = log(1/2) -> w = (2/3)(1/2) = 1/3;  a = (log 2, log 1.5) -> w = 3 (> 1, kept)
    a_w = t(math.log(2 / 3), math.log(2.0), grad=True)
    a_l = t(math.log(0.5), math.log(1.5), grad=True)
    w = L.wpo_weights(a_w, a_l)
    torch.testing.assert_close(w, t(1 / 3, 3.0))
    assert not w.requires_grad
    # max_weight=1.0 is the authors' code / TRL's clamp (README deviation 23)
    torch.testing.assert_close(L.wpo_weights(a_w, a_l, max_weight=1.0), t(1 / 3, 1.0))
    # weighted DPO: each pair's loss times its weight, and the gradient is the weight times DPO's (weights constant)
    inputs = margin_inputs([4.0, -2.0])
    losses, _ = dpo_loss(*inputs, beta=0.1)
    (g,) = torch.autograd.grad((losses * w).sum(), inputs[0])
    torch.testing.assert_close(g, w * -0.1 * torch.sigmoid(-0.1 * t(4.0, -2.0)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_sequence_logps_packed_layout_equals_the_full_one(dtype):
    # the (M, V) layout = the full logits at the positions that predict a completion token, row-major
    g = torch.Generator().manual_seed(6)
    B, T, V = 3, 7, 11
    full = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])
    keep = torch.zeros(B, T, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()
    packed = full[keep]                                                  # (M, V), M = 3 + 6 + 2
    assert packed.shape == (11, V)
    for average in (False, True):
        torch.testing.assert_close(sequence_logps(packed, labels, mask, average),
                                   sequence_logps(full, labels, mask, average))
    torch.testing.assert_close(L.sequence_wpo_logps(packed, labels, mask), L.sequence_wpo_logps(full, labels, mask))
    with pytest.raises(ValueError, match="or \\(M, V\\)"):
        sequence_logps(packed[:-1], labels, mask)                        # one position missing


def test_sequence_logps_shape_error():
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        sequence_logps(torch.zeros(2, 4, 3), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logps_keeps_no_second_full_size_fp32_copy_for_backward(dtype):
    # Autograd's saved tensors are what stays alive between forward and backward. Record every tensor saved
    # while computing sequence_logps and check none is an fp32 tensor of the logits' (B, T-1, V) size
    # (a log_softmax output or an fp32 upcast would be). For fp32 logits, the logits themselves may be saved.
    B, T, V = 2, 7, 50
    logits = torch.randn(B, T, V).to(dtype).requires_grad_(True)
    labels = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sequence_logps(logits, labels, mask)
    full = [t for t in saved if t.dtype == torch.float32 and t.numel() >= B * (T - 1) * V
            and t.data_ptr() != logits.data_ptr()]
    assert not full, [tuple(t.shape) for t in full]
    out.sum().backward()                               # and the gradient is still computed
    assert torch.isfinite(logits.grad.float()).all()
