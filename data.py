"""Preference data: one record schema, loaders by name, one `load_splits` for every consumer, label noise and
margin splits, exact tokenization, and collation into one stacked [chosen; rejected] batch.

The record schema (TRL's preference format; every loader returns it, every consumer reads only it):
    prompt          str, or a list of chat messages [{"role": ..., "content": ...}, ...]
    chosen          str, or a list of chat messages (the assistant turn(s)); the PREFERRED response y_w
    rejected        same type as `chosen`; the dispreferred response y_l
    chosen_score    optional float, or list of K floats (one per Oracle ensemble member): a reward of `chosen`
    rejected_score  optional, same shape as chosen_score
    confidence      optional float: annotator confidence in the label (TL;DR), NaN when unknown
Scores belong to the RESPONSE, not to the label: when label noise swaps chosen and rejected, the scores
move with their texts, so `chosen_score < rejected_score` marks a flipped pair.

Sources (`load_splits(name)` -> train, test and, for the embedded task, its dict):
    embedded        the embedded offline task (the default; embedded.py): controlled sentiment on real tweets,
                    gold = VADER sentiment, pairs sampled from a small SFT model. `embedded-tiny`: for tests.
    ultrafeedback   HuggingFaceH4/ultrafeedback_binarized (train_prefs / test_prefs), GPT-4 scores kept
    tldr            openai/summarize_from_feedback "comparisons", annotator confidence kept;
                    `tldr_splits` gives the DRDO splits by confidence and edit-distance terciles
    cnn_dailymail   abisee/cnn_dailymail 3.0.0 articles as out-of-distribution prompts (prompt only)
    a file          .jsonl / .json / .parquet / .csv already in the schema (10% held out)
    any hub id      a dataset already in the schema

Tokenization (`tokenize_pair`): prompt and responses are tokenized SEPARATELY and concatenated as ids, so the
prompt/response boundary is exact; each response ends with exactly one EOS; when too long, the prompt is
truncated first (keeping its END, where the question is), then the responses (keeping their start).
Pairs whose response is empty, or whose chosen equals rejected, are dropped and counted.

Shapes: B = pairs in a batch, T = padded sequence length, K = Oracle ensemble members.
Run `pytest -q test_data.py` to check every rule above on hand-written token ids.
"""
import hashlib
import json
import math
import os
import random
from collections import Counter

import torch

from common import go_offline, hub_reachable
from embedded import EMBEDDED_PRESETS, embedded_task

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
    elif ext == ".jsonl":                    # read here, line by line, so that every error names its line
        if not os.path.exists(source):
            raise FileNotFoundError(f"data file {source!r} does not exist; {SCHEMA_HELP}")
        rows, lines = read_jsonl_rows(source)
        validate(rows, source, where=lambda i: f"{source}, line {lines[i]}")
        try:
            ds = datasets.Dataset.from_list(rows)
        except Exception as e:   # Arrow cannot give one type to a column (e.g. strings in some rows, lists in others)
            raise ValueError(f"{source}: the rows do not share one type per field ({str(e).splitlines()[0]}); "
                             "use either strings or message lists for a field, in every row") from None
    elif ext in FILE_TYPES:
        if not os.path.exists(source):
            raise FileNotFoundError(f"data file {source!r} does not exist; {SCHEMA_HELP}")
        try:
            ds = datasets.load_dataset(FILE_TYPES[ext], data_files=source, split="train")
        except Exception as e:   # the datasets library raises many types; name the file and keep the cause
            raise ValueError(f"could not read {source!r} as {FILE_TYPES[ext]}: {str(e).splitlines()[0]}") from None
    else:
        ds = _from_hub(source, split=split)
    if max_examples:
        ds = ds.select(range(min(len(ds), max_examples)))
    if ext == ".csv":                        # CSV has no number type: a column with one bad cell is all strings
        ds = csv_scores_to_float(ds, source)
        validate(ds, source, where=lambda i: f"{source}, row {i + 1} after the header")
    elif source != "cnn_dailymail" and ext != ".jsonl":   # prompt-only records (the OOD set) have no pairs
        validate(ds, source)
    return ds


def csv_scores_to_float(ds, source):
    """Score columns read as text -> floats; a cell that is not a number is an error naming its row."""
    for field in ("chosen_score", "rejected_score", "confidence"):
        if field in ds.column_names and any(isinstance(v, str) for v in ds[field]):
            values = []
            for i, v in enumerate(ds[field]):
                try:
                    values.append(float(v) if v not in (None, "") else float("nan"))
                except ValueError:
                    raise ValueError(f"{source}, row {i + 1} after the header, field {field!r}: expected a finite "
                                     f"number, got {describe(v)}; drop or re-score that row") from None
            ds = ds.remove_columns(field).add_column(field, values)
    return ds


def read_jsonl_rows(path):
    """-> (rows, their line numbers) of a JSONL file; a line that is not a JSON object is an error naming it."""
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); fix or delete "
                                 "that line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {n}: expected one JSON object per line, got {type(row).__name__}")
            rows.append(row)
            lines.append(n)
    return rows, lines


def _from_hub(*args, split):
    import datasets
    if not hub_reachable():
        go_offline()                                     # the local datasets cache only, without retries
    try:
        return datasets.load_dataset(*args, split=split)
    except Exception as e:   # offline, unknown id, missing split: one message that says what to do instead
        raise ValueError(f"could not load dataset {args[0]!r} (split {split!r}) from the Hugging Face hub: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Without internet, use "
                         "--data embedded (the default) or a local .jsonl/.json/.parquet/.csv file in the "
                         "schema.") from None


def load_splits(source, held_out=0.1, seed=0, log=print):
    """The one way data enters train.py, oracle.py and evaluate.py -> (train, test, task).

    `task` is the embedded task's dict (embedded.embedded_task: pi_ref, prompts, gold) for `embedded*`
    sources, else None. Hub sources use their test split when they have one; local files (and hub sources
    without one) hold out a seeded `held_out` share of their pairs, never reused for training.
    """
    if source in EMBEDDED_PRESETS:
        task = embedded_task(EMBEDDED_PRESETS[source], log=log)
        return task["train"], task["test"], task
    ds = load_preferences(source, "train")
    if os.path.splitext(source)[1] not in FILE_TYPES:
        try:
            return ds, load_preferences(source, "test"), None
        except (ValueError, FileNotFoundError):
            log(f"{source} has no test split: holding out {held_out:.0%} of its training pairs")
    ds = ds.shuffle(seed=seed)
    n_test = max(1, round(held_out * len(ds)))
    return ds.select(range(n_test, len(ds))), ds.select(range(n_test)), None


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


def describe(value):
    """A short description of a bad value for an error message."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}" if value is not None else "null"


def is_text(value):
    """A string, or a non-empty list of chat messages {"role": str, "content": str}."""
    return isinstance(value, str) or (isinstance(value, list) and len(value) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value))


def is_score(value, allow_nan=False):
    """A finite number (bool excluded), or a non-empty list of them (one per Oracle ensemble member)."""
    values = value if isinstance(value, list) and value else [value]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool)
               and (math.isfinite(v) or (allow_nan and math.isnan(v))) for v in values)


def validate(rows, source, where=None):
    """Check every row against the schema; raise one ValueError naming the source, the row (`where(i)`, e.g.
    the JSONL line), the field and what to do. rows: a Dataset or a list of dicts."""
    where = where or (lambda i: f"{source}, row {i}")
    if len(rows) == 0:
        raise ValueError(f"{source}: the dataset is empty; {SCHEMA_HELP}")
    columns = rows.column_names if hasattr(rows, "column_names") else None
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED if c not in (columns or row)]
        if missing:
            raise ValueError(f"{where(i)}: missing field(s) {missing} (found {sorted(columns or row)}); {SCHEMA_HELP}")
        for field in REQUIRED:
            if not is_text(row[field]):
                raise ValueError(f"{where(i)}, field {field!r}: expected a string or a list of chat messages "
                                 f"(each {{'role': str, 'content': str}}), got {describe(row[field])}; fix or drop "
                                 "that row")
        for field in ("chosen_score", "rejected_score", "confidence"):
            value = row.get(field)
            if value is None and (field == "confidence" or "chosen_score" not in (columns or row)):
                continue
            if not is_score(value, allow_nan=field == "confidence"):
                raise ValueError(f"{where(i)}, field {field!r}: expected a finite number (or a list of them, one "
                                 f"per Oracle member), got {describe(value)}; drop or re-score that row")
        if "chosen_score" in row and row.get("chosen_score") is not None and (
                isinstance(row["chosen_score"], list) != isinstance(row.get("rejected_score"), list)
                or isinstance(row["chosen_score"], list) and len(row["chosen_score"]) != len(row["rejected_score"])):
            raise ValueError(f"{where(i)}: chosen_score and rejected_score must have the same shape (a number "
                             "each, or lists of one length)")


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


def apply_condition(ds, split="all", flip=0.0, max_pairs=0, seed=0):
    """The training condition of a run, in this order: the margin split (`deterministic` / `nondeterministic`:
    top / bottom third of |gold margin|, or of |score margin|; TL;DR: confidence x edit distance), then the
    first `max_pairs` pairs, then a seeded share `flip` of labels swapped."""
    if split != "all":
        cols = ds.column_names
        if "chosen_gold" in cols or "chosen_score" in cols:          # by the gold (or given) score margin
            det, nondet = split_by_margin(ds, columns=("chosen_gold", "rejected_gold")
                                          if "chosen_gold" in cols else None)
        elif "confidence" in cols:                                   # TL;DR: confidence x edit distance
            splits = tldr_splits(ds)
            det, nondet = splits["hc_he"], splits["lc_le"]
        else:
            raise ValueError(f"--split {split} needs scores (chosen_score/rejected_score) or annotator "
                             "confidence in the data; this data has neither")
        ds = det if split == "deterministic" else nondet
    if max_pairs:
        ds = ds.select(range(min(max_pairs, len(ds))))
    if flip:
        ds = flip_labels(ds, flip, seed=seed)
    return ds


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
    """Tokenize every record -> (examples, dropped reasons). Each example keeps its scores and confidence, and
    `row`, its index in `ds`, so values computed per example (Oracle scores) stay aligned with the rows."""
    examples, dropped = [], Counter()
    for i, row in enumerate(ds):
        out, reason = tokenize_pair(tokenizer, row, max_length, max_prompt_length)
        if out is None:
            dropped[reason] += 1
            continue
        for key in ("chosen_score", "rejected_score", "confidence"):
            if key in row and row[key] is not None:
                out[key] = row[key]
        out["row"] = i
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
    B..2B-1 are prompt + rejected (one forward pass sees both, with identical padding and dropout).

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


def collate_completions(pairs, pad_token_id):
    """[(prompt_ids, completion_ids), ...] -> input_ids, attention_mask, loss_mask (N, T), right-padded; the
    loss mask covers the completion (sampled completions, scored by evaluate.py)."""
    T = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), T), pad_token_id, dtype=torch.long)           # (N, T)
    att = torch.zeros(len(pairs), T, dtype=torch.long)                          # (N, T)
    loss = torch.zeros(len(pairs), T, dtype=torch.long)                         # (N, T)
    for i, (p, c) in enumerate(pairs):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        att[i, :len(p) + len(c)] = 1
        loss[i, len(p):len(p) + len(c)] = 1
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def fingerprint(ds, columns=("prompt", "chosen", "rejected")):
    """Content hash of a dataset's pairs (Dataset._fingerprint is random for in-memory datasets)."""
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps([row[c] for c in columns if c in row]).encode())
    return h.hexdigest()[:12]


