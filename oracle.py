"""The DRDO Oracle (phase 1): a causal LM with a scalar reward head, trained with `losses.oracle_loss`.

Nath et al. (arXiv 2410.08458 v2, Eq. 6, reconstructed in PAPER_NOTES A.4) train the Oracle with a
Bradley-Terry loss plus an alpha-weighted NLL of the preferred response, so the same backbone keeps its LM
head (it "can do both"). Here:
    reward R(x, y) = w . h_last + b, with h_last the final hidden state at the LAST NON-PADDING token of
                     x + y (works for right and left padding), and the head in fp32, zero-initialised;
    NLL(y_w)       = -Sbar(y_w), token-averaged over the response, from the same forward pass.

What is here: the head (`add_reward_head`), the pooling (`last_token_index`), one forward for a collated
[chosen; rejected] batch (`oracle_forward`) and the loss of one batch (`oracle_batch_loss`), plus saving and
loading the head beside a Hugging Face checkpoint. Not here yet (issue #6): the `python oracle.py` command
line (training loop, ensembles with bootstrap resamples, held-out accuracy) and cached scoring of a dataset.

NOTE (reconstructs paper): last-token pooling, the zero-initialised linear head and token-averaged NLL are
standard reward-model practice, not confirmed choices of the paper.
"""
import os

import torch
from torch import nn

from losses import oracle_loss, sequence_logps

HEAD_FILE = "reward_head.pt"


def add_reward_head(model):
    """Attach `model.reward_head = Linear(d_model, 1)` in fp32, zero-initialised (all rewards start at 0,
    so the first BT loss is exactly log 2)."""
    d_model = model.config.hidden_size
    model.reward_head = nn.Linear(d_model, 1, dtype=torch.float32, device=model.device)
    nn.init.zeros_(model.reward_head.weight)
    nn.init.zeros_(model.reward_head.bias)
    return model


def last_token_index(attention_mask):
    """(N, T) mask -> (N,) position of the last 1 in each row; right padding: mask.sum - 1, left: T - 1."""
    T = attention_mask.shape[1]
    flipped_first_one = attention_mask.flip(-1).long().argmax(-1)               # (N,) distance from the end
    return T - 1 - flipped_first_one                                            # (N,)


def oracle_forward(model, input_ids, attention_mask):
    """One forward pass -> (logits (N, T, V), rewards (N,) fp32) with N = 2B rows of a collated batch."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]                                              # (N, T, d_model)
    idx = last_token_index(attention_mask)                                      # (N,)
    h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]   # (N, d_model)
    rewards = model.reward_head(h_last.float()).squeeze(-1)                     # (N,)
    return out.logits, rewards


def oracle_batch_loss(model, batch, alpha=0.1):
    """BT + alpha * NLL(y_w) on a collated batch (rows 0..B-1 chosen, B..2B-1 rejected) -> (mean loss, metrics)."""
    logits, rewards = oracle_forward(model, batch["input_ids"], batch["attention_mask"])
    B = rewards.shape[0] // 2
    chosen_nll = -sequence_logps(logits[:B], batch["input_ids"][:B], batch["loss_mask"][:B], average=True)  # (B,)
    losses, metrics = oracle_loss(rewards[:B], rewards[B:], chosen_nll, alpha=alpha)
    return losses.mean(), metrics


@torch.no_grad()
def score(model, batch):
    """Oracle rewards of a collated batch: (chosen (B,), rejected (B,)), eval mode, no gradient."""
    was_training = model.training
    model.eval()
    _, rewards = oracle_forward(model, batch["input_ids"], batch["attention_mask"])
    model.train(was_training)
    B = rewards.shape[0] // 2
    return rewards[:B], rewards[B:]


def save_oracle(model, tokenizer, path):
    """Hugging Face checkpoint (loadable with AutoModelForCausalLM) plus the head in reward_head.pt."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    torch.save(model.reward_head.state_dict(), os.path.join(path, HEAD_FILE))


def load_oracle(path, **from_pretrained_kwargs):
    """Inverse of save_oracle."""
    from transformers import AutoModelForCausalLM

    head_path = os.path.join(path, HEAD_FILE)
    if not os.path.exists(head_path):
        raise FileNotFoundError(f"{path} has no {HEAD_FILE}: it is a language model, not an Oracle saved by "
                                "oracle.py (train one with `python oracle.py`, issue #6)")
    model = add_reward_head(AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs))
    model.reward_head.load_state_dict(torch.load(head_path, map_location=model.device))
    return model
