"""The DRDO Oracle (phase 1): a causal LM with a scalar reward head, trained with `losses.oracle_loss`.

Nath et al. (arXiv 2410.08458 v2, Eq. 6, reconstructed in PAPER_NOTES A.4) train the Oracle with a
Bradley-Terry loss plus an alpha-weighted NLL of the preferred response, so the same backbone keeps its LM
head (it "can do both"). Here:
    reward R(x, y) = w . h_last + b, with h_last the final hidden state at the LAST NON-PADDING token of
                     x + y (works for right and left padding), and the head in fp32, zero-initialised;
    NLL(y_w)       = -Sbar(y_w), token-averaged over the response, from the same forward pass.

What is here: the head (`add_reward_head`), the pooling (`last_token_index`), one forward for a collated
[chosen; rejected] batch (`oracle_forward`), the loss of one batch (`oracle_batch_loss`), saving and loading
the head beside a Hugging Face checkpoint, a training loop (`train_oracle`), held-out accuracy
(`evaluate_oracle`), an ensemble built once and cached (`ensure_oracles`: member k uses seed k and, when K > 1,
a bootstrap resample of the pairs, as e-DPO's ensembles do), and cached scoring of a dataset
(`score_dataset`: one chosen_score / rejected_score entry per member), so train.py never runs an Oracle
inside its loop.

    python oracle.py                                  # one Oracle on the embedded task, scores the pairs
    python oracle.py --ensemble 4 --alpha 0.1         # e-DPO's ensemble
    python oracle.py --model opt-350m --data ultrafeedback   # with internet

NOTE (reconstructs paper): last-token pooling, the zero-initialised linear head and token-averaged NLL are
standard reward-model practice, not confirmed choices of the paper.
"""
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

import data
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
    head = model.reward_head
    del model.reward_head              # the HF checkpoint stays a plain causal LM; the head goes in its own file
    try:
        model.save_pretrained(path)
    finally:
        model.reward_head = head
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    torch.save(model.reward_head.state_dict(), os.path.join(path, HEAD_FILE))


def load_oracle(path, **from_pretrained_kwargs):
    """Inverse of save_oracle."""
    from transformers import AutoModelForCausalLM

    head_path = os.path.join(path, HEAD_FILE)
    if not os.path.exists(head_path):
        raise FileNotFoundError(f"{path} has no {HEAD_FILE}: it is a language model, not an Oracle saved by "
                                "oracle.py (train one with `python oracle.py`)")
    model = add_reward_head(AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs))
    model.reward_head.load_state_dict(torch.load(head_path, map_location=model.device))
    return model


# ============================================================================================================
# Training, held-out evaluation, ensembles, scoring
# ============================================================================================================
@dataclass
class OracleConfig:
    model: str = "embedded"        # backbone: embedded (the task's pi_ref), tiny, opt-125m, a hub id or a path
    data: str = "embedded"         # preference pairs: embedded, embedded-tiny, ultrafeedback, tldr, a file, a hub id
    alpha: float = 0.1             # weight of NLL(y_w) in Eq. 6 (PAPER_NOTES A.4; ~0.01-0.1)
    ensemble: int = 1              # K members; K > 1 trains on bootstrap resamples with seeds 0..K-1 (e-DPO: 2-8)
    epochs: int = 3                # passes over the training pairs (1-5; reward models overfit quickly)
    batch_size: int = 16           # pairs per step
    lr: float = 5e-4               # AdamW learning rate (1e-5 for 100M+ backbones, ~5e-4 for the 1M embedded one)
    max_length: int = 128          # prompt + response tokens (512-1024 for real data)
    max_prompt_length: int = 64    # prompt tokens kept (its end) when a pair is too long
    held_out: float = 0.1          # share of pairs held out when the source has no test split
    seed: int = 0                  # base seed: member k uses seed + k
    out: str = ""                  # output directory; default: a cache directory keyed by config and data
    score: bool = True             # after training, score the training pairs (cached) and print the file


def train_oracle(model, examples, cfg, seed, log=print):
    """Eq. 6 with AdamW, linear warmup (10% of steps) then cosine decay, grad-norm clip 1.0. -> model."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    bar = tqdm(total=total, desc=f"  Oracle (seed {seed})", leave=False, disable=None)
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(examples), generator=gen).tolist()
        chunk = order[(step % steps_per_epoch) * cfg.batch_size:][:cfg.batch_size]
        batch = data.collate([examples[i] for i in chunk], model.config.pad_token_id)
        warm = max(1, total // 10)
        lr = cfg.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * max(0, step - warm) / total))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, metrics = oracle_batch_loss(model, batch, alpha=cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{metrics['accuracies'].mean().item():.2f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def score_examples(model, examples, batch_size=64):
    """Oracle rewards of tokenized pairs -> (chosen (N,), rejected (N,)) float tensors."""
    chosen, rejected = [], []
    for i in range(0, len(examples), batch_size):
        c, r = score(model, data.collate(examples[i:i + batch_size], model.config.pad_token_id))
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_oracle(model, examples, gold=None):
    """Held-out preference accuracy (R(y_w) > R(y_l); ties count half) and reward-margin statistics; with
    gold margins, also their Pearson correlation with the Oracle's margins."""
    c, r = score_examples(model, examples)
    margin = (c - r).double()                                                   # (N,)
    acc = ((margin > 0).double() + 0.5 * (margin == 0).double())
    out = {"pairs": len(examples), "accuracy": acc.mean().item(),
           "accuracy_se": (acc.std() / math.sqrt(len(acc))).item() if len(acc) > 1 else float("nan"),
           "margin_mean": margin.mean().item(), "margin_std": margin.std().item() if len(margin) > 1 else 0.0,
           "margin_median": margin.median().item()}
    if gold is not None and len(gold) > 1:
        out["gold_margin_corr"] = torch.corrcoef(torch.stack([margin, torch.tensor(gold).double()]))[0, 1].item()
    return out


def _gold_margins(ds):
    if "chosen_gold" not in ds.column_names:
        return None
    return [c - r for c, r in zip(ds["chosen_gold"], ds["rejected_gold"])]


def _kept_and_tokenized(tokenizer, ds, cfg, log):
    """(the rows tokenize_pair keeps, their tokenized pairs) in one pass, so scores stay aligned with rows."""
    keep, examples = [], []
    for i, row in enumerate(ds):
        out, _ = data.tokenize_pair(tokenizer, row, cfg.max_length, cfg.max_prompt_length)
        if out is not None:
            keep.append(i)
            examples.append(out)
    if len(keep) < len(ds):
        log(f"  {len(ds) - len(keep)} of {len(ds)} pairs dropped by tokenization (empty or identical responses)")
    if not examples:
        raise ValueError(f"tokenize: every one of the {len(ds)} pairs was dropped")
    return (ds.select(keep) if len(keep) < len(ds) else ds), examples


def ensure_oracles(cfg, train_ds, test_ds, task_reference=None, log=print):
    """Train the K members once; later calls with the same config and data return the cached directories.
    -> (list of member directories, report dict). The report holds each member's held-out statistics."""
    key = data._stable_hash([asdict(cfg) | {"out": "", "score": None}, data.fingerprint(train_ds),
                             data.fingerprint(test_ds), task_reference and os.path.basename(task_reference)])
    out = cfg.out or os.path.join(data.cache_root(), f"oracle-{key}")
    report_path = os.path.join(out, "report.json")
    if os.path.exists(report_path):
        log(f"Oracle: cached in {out}")
        with open(report_path) as f:
            report = json.load(f)
        return [os.path.join(out, m) for m in report["members"]], report
    log(f"Oracle: training {cfg.ensemble} member(s) on {len(train_ds)} pairs, alpha {cfg.alpha}, "
        f"{cfg.epochs} epochs -> {out}")
    os.makedirs(out, exist_ok=True)
    report = {"config": asdict(cfg), "members": [], "held_out": [], "train_pairs": len(train_ds)}
    for k in range(cfg.ensemble):
        t0 = time.time()
        model, tokenizer = data.load_model(cfg.model, task_reference)     # fresh backbone for every member
        add_reward_head(model)
        if k == 0:                                                        # one tokenizer for all members
            _, all_train = _kept_and_tokenized(tokenizer, train_ds, cfg, log)
            test_ds_kept, test_examples = _kept_and_tokenized(tokenizer, test_ds, cfg, log)
            gold = _gold_margins(test_ds_kept)
        train_examples = all_train
        if cfg.ensemble > 1:                                  # bootstrap resample: n draws with replacement
            rng = random.Random(cfg.seed + k)
            train_examples = [all_train[rng.randrange(len(all_train))] for _ in all_train]
        torch.manual_seed(cfg.seed + k)
        train_oracle(model, train_examples, cfg, seed=cfg.seed + k, log=log)
        stats = evaluate_oracle(model, test_examples, gold)
        name = f"member-{k}"
        save_oracle(model, tokenizer, os.path.join(out, name))
        report["members"].append(name)
        report["held_out"].append(stats)
        log(f"  member {k}: held-out accuracy {stats['accuracy']:.3f} +- {stats['accuracy_se']:.3f} on "
            f"{stats['pairs']} pairs, margin {stats['margin_mean']:+.2f} +- {stats['margin_std']:.2f}"
            + (f", corr. with gold margin {stats['gold_margin_corr']:.2f}" if "gold_margin_corr" in stats else "")
            + f" ({time.time() - t0:.0f} s)")
    with open(report_path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(report_path + ".tmp", report_path)             # the report marks the ensemble as complete
    return [os.path.join(out, m) for m in report["members"]], report


def _checkpoint_hash(path):
    import hashlib
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name.endswith((".safetensors", ".bin", ".pt")):
            with open(os.path.join(path, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def score_dataset(member_dirs, ds, max_length=128, max_prompt_length=64, log=print):
    """ds with chosen_score / rejected_score = lists of K Oracle rewards (one per member). Rows the Oracle's
    tokenizer would drop are dropped (and logged). Cached under a key of the members' weights and the data."""
    import datasets

    key = data._stable_hash([[_checkpoint_hash(d) for d in member_dirs], data.fingerprint(ds), max_length,
                             max_prompt_length])
    path = os.path.join(data.cache_root(), f"scored-{key}.jsonl")
    if os.path.exists(path):
        log(f"Oracle scores: cached in {path}")
        return datasets.Dataset.from_list(data.read_jsonl(path))
    log(f"Oracle scores: scoring {len(ds)} pairs with {len(member_dirs)} member(s)")
    cfg = OracleConfig(max_length=max_length, max_prompt_length=max_prompt_length)
    chosen, rejected = [], []
    for d in member_dirs:
        model = load_oracle(d).eval()
        tokenizer = _tokenizer(d)
        kept, examples = _kept_and_tokenized(tokenizer, ds, cfg, log)
        c, r = score_examples(model, examples)
        chosen.append(c.tolist())
        rejected.append(r.tolist())
    rows = [dict(row, chosen_score=[m[i] for m in chosen], rejected_score=[m[i] for m in rejected])
            for i, row in enumerate(kept)]
    data.write_jsonl(rows, path + ".tmp")
    os.replace(path + ".tmp", path)
    log(f"Oracle scores: written to {path}")
    return datasets.Dataset.from_list(rows)


def _tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def load_splits(source, held_out=0.1, seed=0, log=print):
    """(train, test, task) for a data source; task is the embedded task's dict (data.embedded_task) or None.
    Sources without a test split are split here."""
    if source in data.EMBEDDED_PRESETS:
        task = data.embedded_task(data.EMBEDDED_PRESETS[source], log=log)
        return task["train"], task["test"], task
    ds = data.load_preferences(source, "train")
    if os.path.splitext(source)[1] not in data.FILE_TYPES:           # a hub source may have a test split
        try:
            return ds, data.load_preferences(source, "test"), None
        except (ValueError, FileNotFoundError):
            log(f"{source} has no test split: holding out {held_out:.0%} of its training pairs")
    ds = ds.shuffle(seed=seed)
    n_test = max(1, round(held_out * len(ds)))
    return ds.select(range(n_test, len(ds))), ds.select(range(n_test)), None


def main(argv=None):
    cfg = data.parse_config(OracleConfig, argv, description="Train the DRDO Oracle (or an e-DPO ensemble) and "
                                                          "score the preference pairs with it.")
    data.quiet_transformers()
    print(json.dumps(asdict(cfg), indent=1))
    train_ds, test_ds, task = load_splits(cfg.data, cfg.held_out, cfg.seed)
    members, report = ensure_oracles(cfg, train_ds, test_ds, task and task["reference"])
    accs = [m["accuracy"] for m in report["held_out"]]
    print(f"held-out preference accuracy: {', '.join(f'{a:.3f}' for a in accs)} (members); "
          f"chance is 0.5; saved in {os.path.dirname(members[0])}")
    if cfg.score:
        score_dataset(members, train_ds, cfg.max_length, cfg.max_prompt_length)


if __name__ == "__main__":
    main()
