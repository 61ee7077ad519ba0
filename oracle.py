"""The DRDO Oracle (phase 1): a causal LM with a scalar reward head, trained with `losses.oracle_loss`.

Nath et al. (arXiv 2410.08458 v2, Sec. 3, Eq. 6) train the Oracle with a Bradley-Terry loss plus an
alpha-weighted NLL of the preferred response, so the same backbone keeps its LM head (it "can do both").
Here (reconstructed, README deviation 4):
    reward R(x, y) = the reward head of models.py (fp32, zero-initialised, read at the last real token of x + y)
    NLL(y_w)       = -Sbar(y_w), token-averaged over the response, from the same forward pass.

What is here: the loss of one batch (`oracle_batch_loss`), a training loop (`train_oracle`), held-out accuracy
(`evaluate_oracle`), an ensemble built once and cached (`ensure_oracles`: member k uses seed k and, when K > 1,
a bootstrap resample of the pairs, as e-DPO's ensembles do), and cached scoring of a dataset (`score_dataset`:
one chosen_score / rejected_score entry per member), so train.py never runs an Oracle inside its loop; and each
member's export as a Hugging Face sequence-classification checkpoint (`save_seqcls`), for other tools.

    python oracle.py                                  # one Oracle on the embedded task, scores the pairs
    python oracle.py --ensemble 4 --alpha 0.1         # e-DPO's ensemble
    python oracle.py --pairs all                      # a stronger Oracle: every pair of the task's K samples
    python oracle.py --model opt-350m --data ultrafeedback   # with internet
"""
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

import cache
import data
import models
import packing
import ranked
import tokenization
from common import (check_ranges, cosine_schedule, parse_config, quiet_transformers, read_jsonl, stable_hash,
                    weights_hash, write_json, write_jsonl)
from losses import oracle_loss, sequence_logps
from models import add_reward_head, check_available, forward_with_reward, load_model, load_reward_model, save_model

SEQCLS_DIR = "seqcls"            # each member's AutoModelForSequenceClassification export (save_seqcls)


def seqcls_pad_id(tokenizer):
    """The padding id of a sequence-classification export. HF's seq-cls models read the score at the last token
    that is not config.pad_token_id, so that id must never close a sequence: when the tokenizer pads with its
    EOS or end-of-turn token (SmolLM2, Llama), another special token (unk first) takes its place."""
    closing = {tokenizer.convert_tokens_to_ids(t) for t in tokenization.closing_tokens(tokenizer)}
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id] + sorted(tokenizer.all_special_ids)
    pad = next((i for i in candidates if i is not None and i not in closing and i != tokenizer.bos_token_id), None)
    if pad is None:
        raise ValueError("cannot export a sequence-classification checkpoint: every special token of this tokenizer "
                         "closes sequences (EOS / end-of-turn), so none can mark padding; add a pad token")
    return pad


def save_seqcls(model, tokenizer, path):
    """Save a model with a reward head as a Hugging Face sequence-classification checkpoint (num_labels 1): the
    backbone's weights, the reward head as the score head, config.pad_token_id = seqcls_pad_id (the tokenizer
    saved beside it pads with the same id). AutoModelForSequenceClassification.from_pretrained(path) then gives
    our rewards (right- or left-padded; tested to 1e-5), for reward-model benchmarks and other trainers.
    NOTE: HF's score heads have no bias; a head saved with one (older versions) loses it here, which shifts
    every reward by the same constant (differences, hence preferences, unchanged) and is printed."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    pad = seqcls_pad_id(tokenizer)
    config.num_labels, config.pad_token_id, config.architectures = 1, pad, None
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    seq = AutoModelForSequenceClassification.from_config(config, dtype=model.dtype)
    if not isinstance(getattr(seq, "score", None), nn.Linear):
        raise ValueError(f"{type(seq).__name__} has no linear `score` head; this export supports decoder models "
                         "(OPT, Llama, SmolLM2, Qwen, Mistral, GPT-2)")
    seq.base_model.load_state_dict(model.base_model.state_dict())
    with torch.no_grad():
        seq.score.weight.copy_(model.reward_head.weight.to(seq.score.weight.dtype))
    if model.reward_head.bias is not None and model.reward_head.bias.abs().item() > 0:
        print(f"save_seqcls: the reward head's bias {model.reward_head.bias.item():+.3g} is dropped (HF score heads "
              "have none): every reward shifts by that constant, reward differences are unchanged")
    seq.save_pretrained(path)
    if tokenizer is not None:
        tok = copy.deepcopy(tokenizer)
        tok.pad_token = tok.convert_ids_to_tokens(pad)
        tok.padding_side = "right"
        tok.save_pretrained(path)
    return path


def oracle_batch_loss(model, batch, alpha=0.1):
    """BT + alpha * NLL(y_w) on a collated batch (rows 0..B-1 chosen, B..2B-1 rejected) -> (mean loss, metrics)."""
    B = batch["input_ids"].shape[0] // 2
    chosen_only = batch["loss_mask"].clone()                                    # (2B, T) the NLL is of y_w only:
    chosen_only[B:] = 0                                                         # no logits for rejected rows
    logits, rewards = forward_with_reward(model, batch["input_ids"], batch["attention_mask"], chosen_only)
    chosen_nll = -sequence_logps(logits, batch["input_ids"], chosen_only, average=True)[:B]  # (B,)
    losses, metrics = oracle_loss(rewards[:B], rewards[B:], chosen_nll, alpha=alpha)
    return losses.mean(), metrics


@torch.no_grad()
def score(model, batch):
    """Oracle rewards of a collated batch: (chosen (B,), rejected (B,)), eval mode, no gradient."""
    was_training = model.training
    model.eval()
    ids = batch["input_ids"]
    _, rewards = forward_with_reward(model, ids, batch["attention_mask"], torch.zeros_like(ids))   # no logits
    model.train(was_training)
    B = rewards.shape[0] // 2
    return rewards[:B], rewards[B:]


# ============================================================================================================
# Training, held-out evaluation, ensembles, scoring
# ============================================================================================================
@dataclass
class OracleConfig:
    model: str = "embedded"        # backbone: embedded (the task's pi_ref), tiny, opt-125m, a hub id or a path
    data: str = "embedded"         # preference pairs: embedded, embedded-tiny, ultrafeedback, tldr, hh, a file, a hub id
    data_config: str = ""          # hub dataset's configuration (hh: its subset, e.g. helpful-base); empty = the source's default
    data_split: str = ""           # hub dataset's training split, optionally ",<held-out split>" (e.g. train_prefs,test_prefs)
    alpha: float = 0.1             # weight of NLL(y_w) in the Oracle loss (DRDO Eq. 6; ~0.01-0.1)
    ensemble: int = 1              # K members; K > 1 trains on bootstrap resamples with seeds 0..K-1 (e-DPO: 2-8)
    epochs: int = 3                # passes over the training pairs (1-5; reward models overfit quickly)
    pairs: str = "best-worst"      # best-worst: the data's pairs; all: every pair of the embedded task's K samples (training_pairs)
    batch_size: int = 16           # pairs per step
    lr: float = 5e-4               # AdamW learning rate (1e-5 for 100M+ backbones, ~5e-4 for the 1M embedded one)
    warmup: float = 0.1            # share of steps with linear warmup, then cosine decay to 0
    max_length: int = 128          # prompt + response tokens (512-1024 for real data)
    max_prompt_length: int = 64    # prompt tokens kept (its end) when a pair is too long
    held_out: float = 0.1          # share of pairs held out when the source has no test split
    seed: int = 0                  # base seed: member k uses seed + k
    out: str = ""                  # output directory; default: a cache directory keyed by config and data
    score: bool = True             # after training, score the training pairs (cached) and print the file
    seqcls: bool = True            # also save each member as <member>/seqcls (AutoModelForSequenceClassification)
    packing: str = "off"           # off | prefix | rows | both: a pair's prompt computed once, no padding (packing.py)


LIMITS = {"alpha": "[0, inf)", "ensemble": "[1, inf)", "epochs": "[1, inf)", "batch_size": "[1, inf)",
          "lr": "(0, inf)", "warmup": "[0, 1]", "max_length": "[2, inf)", "max_prompt_length": "[1, inf)",
          "held_out": "(0, 1)", "seed": "[0, inf)"}                   # common.check_ranges


PAIRS = ("best-worst", "all")


def training_pairs(pairs, train_ds, task):
    """The pairs the Oracle trains on. `best-worst`: the data's own pairs (train_ds), the paper's setting, where the
    Oracle and the policy see the same comparisons. `all`: every pair of the embedded task's K ranked samples per
    training prompt whose gold differs (ranked.ranked_all_pairs; ~5x the comparisons with K = 4): an Oracle given
    more labelled comparisons than the policy, a stronger one, for asking how much of DRDO's gain is the Oracle's.
    Held-out accuracy is measured on the same held-out best-vs-worst pairs either way."""
    if pairs not in PAIRS:
        raise ValueError(f"the Oracle's pairs must be one of {', '.join(PAIRS)}; got {pairs!r}")
    if pairs == "best-worst":
        return train_ds
    if not task:
        raise ValueError("--oracle_pairs all reads every sampled response of a prompt, which only the embedded task "
                         "keeps (--data embedded...); other data has its pairs only: use best-worst")
    return ranked.ranked_all_pairs(task["train_ranked"])


def train_oracle(model, examples, cfg, seed, log=print):
    """The Oracle loss with AdamW, common.cosine_schedule (warmup, cosine decay to 0), grad-norm clip 1. -> model."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = cosine_schedule(opt, total, cfg.warmup)
    model.train()
    bar = tqdm(total=total, desc=f"  Oracle (seed {seed})", leave=False, disable=None)
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(examples), generator=gen).tolist()
        chunk = order[(step % steps_per_epoch) * cfg.batch_size:][:cfg.batch_size]
        batch = tokenization.collate([examples[i] for i in chunk], model.config.pad_token_id)
        loss, metrics = oracle_batch_loss(model, batch, alpha=cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{metrics['accuracies'].mean().item():.2f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def score_examples(model, examples, batch_size=64):
    """Oracle rewards of tokenized pairs -> (chosen (N,), rejected (N,)) float tensors."""
    chosen, rejected = [], []
    for i in range(0, len(examples), batch_size):
        c, r = score(model, tokenization.collate(examples[i:i + batch_size], model.config.pad_token_id))
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_oracle(model, examples, gold=None):
    """Held-out preference accuracy (R(y_w) > R(y_l); ties count half) and reward-margin statistics; with
    gold margins, also their Pearson correlation with the Oracle's margins."""
    c, r = score_examples(model, examples)
    return margin_stats((c - r).double(), gold)


def margin_stats(margin, gold=None):
    """(N,) reward margins R(y_w) - R(y_l) on held-out pairs (one Oracle's, or an ensemble's mean) -> accuracy
    (ties count half) with its SE, margin mean / std / median, and the Pearson correlation with the gold margins."""
    acc = ((margin > 0).double() + 0.5 * (margin == 0).double())
    out = {"pairs": len(margin), "accuracy": acc.mean().item(),
           "accuracy_se": (acc.std() / math.sqrt(len(acc))).item() if len(acc) > 1 else float("nan"),
           "margin_mean": margin.mean().item(), "margin_std": margin.std().item() if len(margin) > 1 else 0.0,
           "margin_median": margin.median().item()}
    if gold is not None and len(gold) > 1:
        out["gold_margin_corr"] = torch.corrcoef(torch.stack([margin, torch.tensor(gold).double()]))[0, 1].item()
    return out


def ensure_oracles(cfg, train_ds, test_ds, task_reference=None, log=print):
    """Train the K members once; later calls with the same config and data return the cached directories.
    -> (list of member directories, report dict). The report holds each member's held-out statistics."""
    # the key: what changes the members (data_config / data_split / pairs / seqcls do not: the data's content is hashed)
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("data_config", "data_split", "pairs", "seqcls", "packing")}
    key = stable_hash([settings | {"out": "", "score": None}, data.fingerprint(train_ds),
                       data.fingerprint(test_ds), task_reference and os.path.basename(task_reference),
                       *models.packing_key()])
    out = cfg.out or os.path.join(cache.cache_root(), f"oracle-{key}")
    if cache.problem(out) is None:
        log(f"Oracle: cached in {out}")
    built = {}

    def build(tmp):                        # every member, then report.json; cache.build renames tmp to out
        built["report"] = train_members(cfg, train_ds, test_ds, task_reference, tmp, out, log)
    # a directory the user named with --out is never deleted: a damaged one is refused (naming the file)
    cache.build(out, build, log, inputs=[settings, key], rebuild=not cfg.out,
                fix=f"Delete {out} (or choose another --out) and run oracle.py again.")
    report = built.get("report")
    if report is None:                      # cached (by this or another process)
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
    members = [os.path.join(out, m) for m in report["members"]]
    for d in members if cfg.seqcls else []:  # an Oracle built with --no-seqcls gets its export when asked for
        if cache.problem(os.path.join(d, SEQCLS_DIR)) is not None:
            from transformers import AutoTokenizer
            export_seqcls(load_reward_model(d), AutoTokenizer.from_pretrained(d), d)
    return members, report


def saved_members(directory):
    """The member directories of an Oracle saved by `oracle.py --out DIR` (or any cached oracle-* entry), checked:
    -> list of paths. A directory that is not one, or is damaged, is a ValueError naming the fix."""
    report = os.path.join(directory, "report.json")
    why = (f"{directory}: no such directory" if not os.path.isdir(directory) else
           f"{directory} holds no report.json: it is not an Oracle saved by oracle.py" if not os.path.exists(report)
           else cache.problem(directory))
    if why:
        raise ValueError(f"--oracle_dir {why}. Train one with: python oracle.py --out {directory}")
    with open(report) as f:
        return [os.path.join(directory, m) for m in json.load(f)["members"]]


def train_members(cfg, train_ds, test_ds, task_reference, directory, final, log=print):
    """Train the cfg.ensemble members into `directory` (member-<k>/ each, report.json last) -> the report."""
    log(f"Oracle: training {cfg.ensemble} member(s) on {len(train_ds)} pairs, alpha {cfg.alpha}, "
        f"{cfg.epochs} epochs -> {final}")
    report = {"config": asdict(cfg), "members": [], "held_out": [], "train_pairs": len(train_ds)}
    for k in range(cfg.ensemble):
        t0 = time.time()
        model, tokenizer = load_model(cfg.model, task_reference)         # fresh backbone for every member
        add_reward_head(model)
        if k == 0:                                                        # one tokenizer for all members
            lengths = (cfg.max_length, cfg.max_prompt_length)
            all_train, _ = tokenization.tokenize_dataset(tokenizer, train_ds, *lengths, log)
            test_examples, _ = tokenization.tokenize_dataset(tokenizer, test_ds, *lengths, log)
            gold = (None if "chosen_gold" not in test_ds.column_names else
                    [test_ds[e["row"]]["chosen_gold"] - test_ds[e["row"]]["rejected_gold"] for e in test_examples])
        train_examples = all_train
        if cfg.ensemble > 1:                                  # bootstrap resample: n draws with replacement
            rng = random.Random(cfg.seed + k)
            train_examples = [all_train[rng.randrange(len(all_train))] for _ in all_train]
        torch.manual_seed(cfg.seed + k)
        train_oracle(model, train_examples, cfg, seed=cfg.seed + k, log=log)
        stats = evaluate_oracle(model, test_examples, gold)
        name = f"member-{k}"
        save_model(model, tokenizer, os.path.join(directory, name))
        if cfg.seqcls:
            export_seqcls(model, tokenizer, os.path.join(directory, name))
        report["members"].append(name)
        report["held_out"].append(stats)
        log(f"  member {k}: held-out accuracy {stats['accuracy']:.3f} +- {stats['accuracy_se']:.3f} on "
            f"{stats['pairs']} pairs, margin {stats['margin_mean']:+.2f} +- {stats['margin_std']:.2f}"
            + (f", corr. with gold margin {stats['gold_margin_corr']:.2f}" if "gold_margin_corr" in stats else "")
            + f" ({time.time() - t0:.0f} s)")
    write_json(report, os.path.join(directory, "report.json"))
    return report


def export_seqcls(model, tokenizer, member_dir):
    """<member_dir>/seqcls: the member as a sequence-classification checkpoint (save_seqcls above), written
    atomically; AutoModelForSequenceClassification.from_pretrained(<member_dir>/seqcls) gives its rewards."""
    return cache.build(os.path.join(member_dir, SEQCLS_DIR), lambda tmp: save_seqcls(model, tokenizer, tmp),
                       log=lambda *_: None)


def score_dataset(member_dirs, ds, max_length=128, max_prompt_length=64, log=print):
    """ds with chosen_score / rejected_score = lists of K Oracle rewards (one per member). Rows the Oracle's
    tokenizer would drop are dropped (and logged). Cached under a key of the members' weights and the data."""
    import datasets
    from transformers import AutoTokenizer

    key = stable_hash([[weights_hash(d) for d in member_dirs], data.fingerprint(ds), max_length,
                       max_prompt_length, *models.packing_key()])
    entry = os.path.join(cache.cache_root(), f"scored-{key}")
    path = os.path.join(entry, "scores.jsonl")
    if cache.problem(entry) is None:
        log(f"Oracle scores: cached in {path}")
        return datasets.Dataset.from_list(read_jsonl(path))

    def build(tmp):
        log(f"Oracle scores: scoring {len(ds)} pairs with {len(member_dirs)} member(s)")
        chosen, rejected = [], []
        for d in member_dirs:
            model = load_reward_model(d).eval()
            examples, _ = tokenization.tokenize_dataset(AutoTokenizer.from_pretrained(d), ds, max_length,
                                                        max_prompt_length, log)
            c, r = score_examples(model, examples)
            chosen.append(c.tolist())
            rejected.append(r.tolist())
        write_jsonl([dict(ds[e["row"]], chosen_score=[m[i] for m in chosen], rejected_score=[m[i] for m in rejected])
                     for i, e in enumerate(examples)], os.path.join(tmp, "scores.jsonl"))
    cache.build(entry, build, log, inputs=key)
    log(f"Oracle scores: in {path}")
    return datasets.Dataset.from_list(read_jsonl(path))


@torch.no_grad()
def score_groups(member_dirs, ds, max_length=128, max_prompt_length=64, log=print):
    """BRAIn: the Oracle's reward (mean over its members) of each of the K `responses` of every record of ds ->
    {row index: [K rewards]} (rows the Oracle's tokenizer drops are absent). Cached under a key of the members'
    weights and the data."""
    from transformers import AutoTokenizer

    key = stable_hash([[weights_hash(d) for d in member_dirs], data.fingerprint(ds, ("prompt", "responses")),
                       max_length, max_prompt_length, *models.packing_key()])

    def compute():
        log(f"Oracle scores of the groups: {len(ds)} prompts x their responses, {len(member_dirs)} member(s)")
        totals = {}
        for d in member_dirs:
            model = load_reward_model(d).eval()
            examples, _ = tokenization.tokenize_dataset(AutoTokenizer.from_pretrained(d), ds, max_length,
                                                        max_prompt_length, log)
            for i in range(0, len(examples), 16):
                part = examples[i:i + 16]
                batch = tokenization.collate(part, model.config.pad_token_id)
                ids, att = batch["group_input_ids"], batch["group_attention_mask"]
                rewards = forward_with_reward(model, ids, att, torch.zeros_like(ids))[1].view(-1, len(part)).T
                for e, row in zip(part, rewards.tolist()):                 # (K,) per example
                    totals[e["row"]] = [a + b / len(member_dirs) for a, b in zip(totals.get(e["row"], [0.0] * len(row)), row)]
        return totals
    return cache.load_or_build(os.path.join(cache.cache_root(), f"groupscores-{key}"), "scores.pt", compute, log,
                               inputs=key, what="Oracle scores of the groups")


def main(argv=None):
    cfg = parse_config(OracleConfig, argv, description="Train the DRDO Oracle (or an e-DPO ensemble) and "
                                                       "score the preference pairs with it.")
    try:
        check_ranges(cfg, LIMITS)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if cfg.packing not in packing.MODES:
        sys.exit(f"error: --packing must be one of {', '.join(packing.MODES)}; got {cfg.packing!r}")
    quiet_transformers()
    print(json.dumps(asdict(cfg), indent=1))
    models.PACKING = cfg.packing                        # every forward: training and scoring (packing.py)
    try:
        check_available(cfg.model)
        train_ds, test_ds, task = data.load_splits(cfg.data, cfg.held_out, cfg.seed, config=cfg.data_config,
                                                   split=cfg.data_split)
        members, report = ensure_oracles(cfg, training_pairs(cfg.pairs, train_ds, task), test_ds,
                                         task and task["reference"])
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        sys.exit(f"error: {e}")
    accs = [m["accuracy"] for m in report["held_out"]]
    print(f"held-out preference accuracy: {', '.join(f'{a:.3f}' for a in accs)} (members); "
          f"chance is 0.5; saved in {os.path.dirname(members[0])}")
    if len(members) > 1:             # what drdo and distill read: the members' mean reward
        held = score_dataset(members, test_ds, cfg.max_length, cfg.max_prompt_length)
        margin = (torch.tensor(held["chosen_score"]) - torch.tensor(held["rejected_score"])).double().mean(1)   # (N,)
        gold = (torch.tensor(held["chosen_gold"]) - torch.tensor(held["rejected_gold"])).tolist() \
            if "chosen_gold" in held.column_names else None
        stats = margin_stats(margin, gold)
        print(f"ensemble mean: held-out accuracy {stats['accuracy']:.3f} +- {stats['accuracy_se']:.3f}"
              + (f", corr. with gold margin {stats['gold_margin_corr']:.2f}" if gold else ""))
    if cfg.score:
        score_dataset(members, train_ds, cfg.max_length, cfg.max_prompt_length)


if __name__ == "__main__":
    main()
