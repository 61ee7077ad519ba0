"""The training objective of a micro-batch, built from the method's registry entry alone (losses.LOSSES): which
tensor pairs the loss takes and in what order (loss_inputs), which Config fields fill its keywords
(compute_loss), and the passes the entry's optional fields ask for: `running` keywords (running_means),
`window` keywords chosen on the whole optimizer batch (window_keywords), `terms` isolated for their gradient
norms (term_grad_norms); plus the held-out evaluation of the same objective (evaluate_pairs).

There is no per-method branch here: a new loss is a function and a registry entry in losses.py (README,
"Adding a loss"). train.py runs the loop around these; bench.py times compute_loss.
"""
import torch

import distributed
import tokenization
from losses import completion_lengths, loss_entry, wpo_weights
from models import SLOW, adapter, autocast, batch_logps, pair_logps, to_device
from runlog import metric_sums

SINGLE = distributed.Dist()          # one process: every distributed step is the identity


def collate(examples, pad_token_id):
    """tokenization.collate plus the cached reference log-probs, as (B,) tensors."""
    batch = tokenization.collate(examples, pad_token_id)
    for key in ("ref_chosen", "ref_rejected", "ref_chosen_tail", "ref_rejected_tail", "ref_guided_chosen",
                "ref_guided_rejected"):
        if key in examples[0]:
            batch[key] = torch.tensor([e[key] for e in examples])
    if "anchor0_chosen" in examples[0]:         # --anchor_models: (J, B), newest first (online.py's iterates)
        J = sum(1 for k in examples[0] if k.startswith("anchor") and k.endswith("_chosen"))
        for side in ("chosen", "rejected"):
            batch[f"anchor_{side}"] = torch.tensor([[e[f"anchor{j}_{side}"] for e in examples] for j in range(J)])
    for key in ("group_ref", "group_rewards"):   # BRAIn: (B, K) per prompt's candidates
        if key in examples[0]:
            batch[key] = torch.tensor([e[key] for e in examples])
    if "guidance_chosen" in examples[0]:      # TGDPO: each response token's g_t, at that token's position (2B, T)
        weights = torch.zeros(batch["input_ids"].shape)
        for side, offset in (("chosen", 0), ("rejected", len(examples))):
            for i, e in enumerate(examples):
                start = len(e["prompt_ids"])
                weights[offset + i, start:start + len(e[f"guidance_{side}"])] = torch.tensor(e[f"guidance_{side}"])
        batch["guidance"] = weights
    return batch


def uses_reward_head(cfg):
    """The policy carries a reward head when the loss consumes student rewards and --student_reward is head."""
    return "student" in loss_entry(cfg.method).inputs and cfg.student_reward == "head"


def student_rewards(cfg, head_rewards, sums, means):
    """DRDO's student reward r(x, y) of (y_w, y_l): the policy's implicit reward beta_r * log pi(y|x), summed
    (implicit-sum) or token-averaged (implicit-mean), or a reward head on the policy (head, an ablation;
    README deviation 5)."""
    if cfg.student_reward == "head":
        return head_rewards
    logps = sums if cfg.student_reward == "implicit-sum" else means
    return cfg.beta_r * logps[0], cfg.beta_r * logps[1]


def loss_inputs(cfg, model, batch):
    """One forward of the stacked [chosen; rejected] batch -> (the positional tensors of the method's loss, in
    the order its registry entry names them; the policy's (chosen, rejected) log-probs as the loss uses them;
    the forward's other outputs: models.pair_logps's dict, with WPO's inputs under --wpo).
    Only what the entry names is read from the batch."""
    info = loss_entry(cfg.method)
    head = uses_reward_head(cfg)
    out = pair_logps(model, batch, average=False, with_head=head, wpo=cfg.wpo, logits_mean=True,
                     tail="policy_tail" in info.inputs,
                     token_weights=batch["guidance"] if "policy_guided" in info.inputs else None)
    (c_sum, r_sum), head_rewards = out["logps"], out.get("head")                             # (B,) S
    n = completion_lengths(batch["loss_mask"])                                               # (2B,) |y|
    B = len(c_sum)
    c_mean, r_mean = c_sum / n[:B], r_sum / n[B:]                                            # (B,) Sbar
    policy = (c_mean, r_mean) if info.average_logps else (c_sum, r_sum)
    inputs = {
        "policy": lambda: policy,
        "policy_sum": lambda: (c_sum, r_sum),                                                # (B,) S
        "policy_mean": lambda: (c_mean, r_mean),                                             # (B,) Sbar
        "reference": lambda: (batch["ref_chosen"], batch["ref_rejected"]),                   # (B,) cached
        "policy_tail": lambda: out["tail"],                                                  # (B,) T, LD-DPO
        "reference_tail": lambda: (batch["ref_chosen_tail"], batch["ref_rejected_tail"]),    # (B,) cached
        "brevity": lambda: (-n[:B].to(c_sum.dtype), -n[B:].to(c_sum.dtype)),                # (B,) -|y|
        "gold": lambda: gold_logps(model, batch),                                            # (B,) TPO
        "group": lambda: (group_logps(model, batch), batch["group_ref"]),                    # (B, K) BRAIn
        "group_rewards": lambda: (batch["group_rewards"], batch["group_ref"]),               # (B, K), q = pi_ref
        "policy_guided": lambda: out["guided"],                                              # (B,) TGDPO
        "reference_guided": lambda: (batch["ref_guided_chosen"], batch["ref_guided_rejected"]),  # (B,) cached
        "oracle": lambda: (batch["chosen_scores"].mean(0), batch["rejected_scores"].mean(0)),  # (B,)
        "scores": lambda: (batch["chosen_scores"].mean(0), batch["rejected_scores"].mean(0)),  # (B,) the records'
        "win_rates": lambda: (batch["chosen_win_rate"], batch["rejected_win_rate"]),         # (B,) online.py
        "anchor": lambda: (batch["anchor_chosen"][0], batch["anchor_rejected"][0]),          # (B,) cached
        "anchors": lambda: (batch["anchor_chosen"], batch["anchor_rejected"]),               # (J, B) cached
        "policy_slow": lambda: slow_logps(model, batch),                                      # (B,) OFS-DPO
        "oracle_members": lambda: (batch["chosen_scores"], batch["rejected_scores"]),         # (K, B)
        "student": lambda: student_rewards(cfg, head_rewards, (c_sum, r_sum), (c_mean, r_mean)),
    }
    return [t for name in info.inputs for t in inputs[name]()], policy, out


def slow_logps(model, batch):
    """OFS-DPO: the policy's summed log-probs of (y_w, y_l) with its second LoRA module, one more forward."""
    with adapter(model, SLOW):
        return pair_logps(model, batch)["logps"]


def gold_logps(model, batch):
    """TPO: the policy's (token-averaged, summed) log-probs of the batch's gold responses, one more forward."""
    gold = {"input_ids": batch["gold_input_ids"], "attention_mask": batch["gold_attention_mask"],
            "loss_mask": batch["gold_loss_mask"]}
    S = batch_logps(model, gold)["logps"]                                                    # (B,)
    return S / completion_lengths(gold["loss_mask"]).to(S.dtype), S


def group_logps(model, batch):
    """BRAIn: the policy's summed log-probs of every prompt's K candidates -> (B, K), one more forward."""
    group = {"input_ids": batch["group_input_ids"], "attention_mask": batch["group_attention_mask"],
             "loss_mask": batch["group_loss_mask"]}
    S = batch_logps(model, group)["logps"]                                                   # (K * B,) k-major
    return S.view(-1, batch["group_ref"].shape[0]).T                                         # (B, K)


def compute_loss(cfg, model, batch, keywords=None):
    """-> (losses (B,), metrics dict of detached (B,) tensors, (chosen, rejected) policy log-probs).
    The registry entry says which tensors the loss takes (loss_inputs) and which Config fields fill its
    keywords; `keywords` adds or replaces some (the running means of `running` entries, a term's overrides)."""
    info = loss_entry(cfg.method)
    args, policy, forward_out = loss_inputs(cfg, model, batch)
    kwargs = {keyword: getattr(cfg, field) for keyword, field in info.hparams.items()} | (keywords or {})
    losses, metrics = info.fn(*args, **kwargs)
    metrics = {**metrics, "chosen_logits_mean": forward_out["logits_mean"][0],
               "rejected_logits_mean": forward_out["logits_mean"][1]}
    if "wpo" in forward_out:    # --wpo, allowed for this entry (config.resolve): w(y_w) w(y_l) per pair, detached
        weights = wpo_weights(*forward_out["wpo"])                                  # (B,)
        losses, metrics = losses * weights, {**metrics, "wpo_weight": weights}
    return losses, metrics, policy


def term_grad_norms(cfg, model, batch, keywords=None):
    """Gradient norm of each term of the loss alone (the registry's `terms`), on one batch: which term drives
    the update. -> {"grad_norm/<term>": float}; {} for a loss without named terms."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for name, overrides in loss_entry(cfg.method).terms.items():
        losses, _, _ = compute_loss(cfg, model, batch, (keywords or {}) | overrides)
        grads = torch.autograd.grad(losses.float().mean(), params, allow_unused=True)
        out[f"grad_norm/{name}"] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()
    return out


def running_means(running):
    """{keyword: mean} from the loop's {keyword: [sum, pairs]} of a `running` metric (empty before step 1)."""
    return {keyword: total / pairs for keyword, (total, pairs) in running.items() if pairs}


@torch.no_grad()
def window_keywords(cfg, model, micro_batches, examples, pad_id, device, keywords=None, d=SINGLE):
    """The registry's `window` keywords for one optimizer step (e-DPO's member), {} for a loss without them (and
    then no extra pass): one pass without gradient over the step's micro-batches (this rank's share; the sums
    are added over ranks) sums the loss's (B, K) metric over every pair of the step; the keyword is the argmin
    k of that (K,) sum, the same on every micro-batch and every rank."""
    rules = {kw: r for kw, r in loss_entry(cfg.method).window.items() if not r.when or getattr(cfg, r.when[0]) == r.when[1]}
    if not rules:
        return {}
    totals = {}
    for micro, counted in micro_batches:
        batch = to_device(collate([examples[i] for i in micro], pad_id), device)
        with autocast(cfg, device):
            _, metrics, _ = compute_loss(cfg, model, batch, keywords)
        for kw, rule in rules.items():
            for k, v in enumerate(metrics[rule.metric].double().sum(0).tolist()):       # (K,) summed over pairs
                totals[kw, k] = totals.get((kw, k), 0.0) + (v if counted else 0.0)
    totals = d.all_sum(totals)
    return {kw: min((k for w, k in totals if w == kw), key=lambda k: totals[kw, k]) for kw in rules}   # argmin


@torch.no_grad()
def evaluate_pairs(cfg, model, examples, pad_id, device, keywords=None, d=SINGLE):
    """Held-out loss, reward accuracy and margins (eval_ prefix, as the HF trainers), micro-batch by micro-batch;
    under torchrun each rank takes a share of the micro-batches and the sums are added over ranks."""
    model.eval()
    totals, n = {}, 0
    for i, counted in d.share(list(range(0, len(examples), cfg.micro_batch_size)), pad=d.fsdp):
        batch = to_device(collate(examples[i:i + cfg.micro_batch_size], pad_id), device)
        with autocast(cfg, device):
            losses, metrics, logps = compute_loss(cfg, model, batch, keywords)
        if counted:
            for k, v in metric_sums(metrics, losses.float(), logps).items():
                totals[k] = totals.get(k, 0.0) + v
            n += losses.shape[0]
    totals = d.all_sum({**totals, "pairs": n})
    n = totals.pop("pairs")
    return {f"eval_{k}": v / n for k, v in totals.items()}
