"""Preference data: one record schema, loaders by name, converters from each source's own schema, validation
with file / line / field errors, and one `load_splits` for every consumer. What a run does to the records
(label noise, margin splits) is in conditions.py; tokenization and collation are in tokenization.py.

The record schema (TRL's preference format; every loader returns it, every consumer reads only it):
    prompt          str, or a list of chat messages [{"role": ..., "content": ...}, ...]
    chosen          str, or a list of chat messages (the assistant turn(s)); the PREFERRED response y_w
    rejected        same type as `chosen`; the dispreferred response y_l
    chosen_score    optional float, or list of K floats (one per Oracle ensemble member): a reward of `chosen`
    rejected_score  optional, same shape as chosen_score
    confidence      optional float: annotator confidence in the label (TL;DR), NaN when unknown
    gold_response   optional, same type as `chosen`: a third, best response (TPO's "gold"; its NLL is trained)
    responses       optional list of K strings: every sampled response of the prompt (BRAIn's candidates)
    chosen_win_rate optional float in [0, 1]: P_hat(chosen > pi_t), its estimated win rate against the policy
    rejected_win_rate   that sampled it (online.py writes both for SPPO and DNO; losses.win_rates)
Scores belong to the RESPONSE, not to the label: when label noise swaps chosen and rejected, the scores
move with their texts, so `chosen_score < rejected_score` marks a flipped pair.

Formats the loaders accept, in a file or a hub dataset, and what they become:
    standard        prompt, chosen, rejected strings: as they are
    conversational  prompt, chosen, rejected message lists: as they are. tokenization.py renders them with the
                    tokenizer's chat template or, for a tokenizer without one, the fallback template
                    "User: {content}\n\nAssistant: {content}" (tokenization.FALLBACK_TEMPLATE: role capitalised,
                    turns joined by a blank line, the prompt ending with "\n\nAssistant:", a response " {content}")
    implicit prompt no prompt field; chosen and rejected are whole conversations sharing a prefix (Anthropic HH):
                    the shared prefix becomes the prompt (`extract_prompt`); HH's "\n\nHuman: ... \n\nAssistant:
                    ..." strings are first split into user / assistant messages
    a source's own  UltraFeedback binarized (score_chosen, score_rejected, full conversations), TL;DR
    schema          comparisons (info, summaries, choice), CNN/DailyMail (article): converted by their columns

Sources (`load_splits(name)` -> train, test and, for the embedded task, its dict):
    embedded        the embedded offline task (the default; embedded.py): controlled sentiment on real tweets,
                    gold = VADER sentiment, pairs sampled from a small SFT model. `embedded-tiny`: for tests.
    ultrafeedback   HuggingFaceH4/ultrafeedback_binarized (train_prefs / test_prefs), GPT-4 scores kept
    tldr            openai/summarize_from_feedback "comparisons" (train / validation), annotator confidence kept;
                    `tldr_splits` gives the DRDO splits by confidence and edit-distance terciles
    hh              Anthropic/hh-rlhf (train / test); its config is the subset folder, e.g. helpful-base
    cnn_dailymail   abisee/cnn_dailymail 3.0.0 articles as out-of-distribution prompts (prompt only)
    a file          .jsonl / .json / .parquet / .csv in any format above (10% held out)
    any hub id      a dataset in any format above; `config` / `split` (--data_config, --data_split) choose
                    its configuration and its "train[,test]" splits (no test split: 10% held out)
Without network every hub source fails with one message that names the offline choices.

Shapes: none here (records are dicts); tokenization.py has the tensors.
Run `pytest -q test_data.py` to check every rule above on small files in each source's own schema.
"""
import hashlib
import json
import math
import os
import re

from common import go_offline, hub_reachable
from embedded import EMBEDDED_PRESETS, embedded_task
from ranked import ranked_groups, ranked_pairs, ranked_triples

REQUIRED = ("prompt", "chosen", "rejected")
SCHEMA_HELP = ("expected columns: prompt, chosen, rejected (strings or lists of chat messages; without a prompt, "
               "chosen and rejected must be whole conversations sharing it), optional chosen_score, "
               "rejected_score (float or list of floats), optional confidence (float)")
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Named hub sources: hub id, default configuration, default (train, held-out) splits.
HUB_SOURCES = {"ultrafeedback": ("HuggingFaceH4/ultrafeedback_binarized", "", ("train_prefs", "test_prefs")),
               "tldr": ("openai/summarize_from_feedback", "comparisons", ("train", "validation")),
               "hh": ("Anthropic/hh-rlhf", "", ("train", "test")),
               "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", ("train", "test"))}


# ============================================================================================================
# Loading
# ============================================================================================================
def load_preferences(source, split="", config="", max_examples=None):
    """Load preference pairs in the record schema from a named source, a local file, or a hub id.
    split: a hub split name ('' = the source's training split); config: the hub configuration ('' = the
    source's default; for hh the subset folder, e.g. harmless-base)."""
    import datasets

    ext = os.path.splitext(source)[1]
    if source in EMBEDDED_PRESETS:
        return embedded_task(EMBEDDED_PRESETS[source])[split or "train"]
    if ext == ".jsonl":                      # read here, line by line, so that every error names its line
        if not os.path.exists(source):
            raise FileNotFoundError(f"data file {source!r} does not exist; {SCHEMA_HELP}")
        rows, lines = read_jsonl_rows(source)
        kind = source_kind(set().union(*rows) if rows else set())
        rows = [convert_row(kind, row, where=f"{source}, line {n}") for row, n in zip(rows, lines)]
        validate(rows, source, where=lambda i: f"{source}, line {lines[i]}")
        try:
            ds = datasets.Dataset.from_list(rows)
        except Exception as e:   # Arrow cannot give one type to a column (e.g. strings in some rows, lists in others)
            raise ValueError(f"{source}: the rows do not share one type per field ({str(e).splitlines()[0]}); "
                             "use either strings or message lists for a field, in every row") from None
        return ds.select(range(min(len(ds), max_examples))) if max_examples else ds
    if ext in FILE_TYPES:
        if not os.path.exists(source):
            raise FileNotFoundError(f"data file {source!r} does not exist; {SCHEMA_HELP}")
        try:
            ds = datasets.load_dataset(FILE_TYPES[ext], data_files=source, split="train")
        except Exception as e:   # the datasets library raises many types; name the file and keep the cause
            raise ValueError(f"could not read {source!r} as {FILE_TYPES[ext]}: {str(e).splitlines()[0]}") from None
        where = (lambda i: f"{source}, row {i + 1} after the header") if ext == ".csv" else None
    else:
        hub_id, default_config, (train_split, _) = HUB_SOURCES.get(source, (source, "", ("train", "test")))
        split, config = split or train_split, config or default_config
        ds = from_hub(hub_id, config, split, data_dir=source == "hh")
        where = lambda i: f"{hub_id} ({split}), row {i}"    # noqa: E731
    if max_examples:
        ds = ds.select(range(min(len(ds), max_examples)))
    if ext == ".csv":                        # CSV has no number type: a column with one bad cell is all strings
        ds = csv_scores_to_float(ds, source)
    kind = source_kind(set(ds.column_names))
    if kind != "schema":
        ds = ds.map(lambda row, i: convert_row(kind, row, (where or (lambda j: f"{source}, row {j}"))(i)),
                    with_indices=True, remove_columns=ds.column_names)
    if kind != "prompts":                    # prompt-only records (the OOD set) have no pairs
        validate(ds, source, where=where)
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


def from_hub(hub_id, config, split, data_dir=False):
    """datasets.load_dataset of one split of a hub dataset (`config` is its data_dir for Anthropic/hh-rlhf);
    offline, or for an unknown id / config / split: one ValueError that says what to do instead."""
    import datasets
    if not hub_reachable():
        go_offline()                                     # the local datasets cache only, without retries
    try:
        if data_dir:
            return datasets.load_dataset(hub_id, data_dir=config or None, split=split)
        return datasets.load_dataset(hub_id, config or None, split=split)
    except Exception as e:   # offline, unknown id, missing split: one message that says what to do instead
        raise ValueError(f"could not load dataset {hub_id!r} (config {config or 'default'!r}, split {split!r}) from "
                         f"the Hugging Face hub: {str(e).splitlines()[0] if str(e) else type(e).__name__}. Without "
                         "internet, use --data embedded (the default) or a local .jsonl/.json/.parquet/.csv file in "
                         "the schema.") from None


def hub_splits(source, data_split=""):
    """--data_split "train" or "train,test" -> (train split, held-out split or None); '' = the source's own."""
    if not data_split:
        return HUB_SOURCES.get(source, (source, "", ("train", "test")))[2]
    parts = [p.strip() for p in data_split.split(",")]
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"--data_split takes the hub dataset's training split, optionally a comma and its held-out "
                         f"split (e.g. train_prefs,test_prefs); got {data_split!r}")
    return parts[0], parts[1] if len(parts) == 2 else None


def load_splits(source, held_out=0.1, seed=0, log=print, config="", split="", triples=False, stage=0, groups=False):
    """The one way data enters train.py, oracle.py and evaluate.py -> (train, test, task).
    triples=True (TPO): every record needs a gold_response; the embedded task builds them from its K ranked
    samples (ranked_triples), other data must have the column. stage=k (Curry-DPO, curriculum.py): the
    embedded task's stage-k pairs of its ranked samples (ranked_pairs) instead of its best-vs-worst pairs.
    groups=True (BRAIn): records carry all K `responses` of their prompt (ranked_groups on the embedded task).

    `task` is the embedded task's dict (embedded.embedded_task: pi_ref, prompts, gold) for `embedded*`
    sources, else None. Hub sources use their held-out split (`split` = "train,test" names both; default:
    the source's own); local files, and hub sources without a held-out split, hold out a seeded `held_out`
    share of their pairs, never reused for training. `config`: the hub configuration (--data_config).
    """
    local = source in EMBEDDED_PRESETS or os.path.splitext(source)[1] in FILE_TYPES
    if local and (config or split):
        raise ValueError(f"--data_config and --data_split choose a hub dataset's configuration and splits; "
                         f"{source!r} is not a hub dataset (drop them)")
    if source in EMBEDDED_PRESETS:
        task = embedded_task(EMBEDDED_PRESETS[source], log=log)
        if triples:
            return ranked_triples(task["train_ranked"]), ranked_triples(task["test_ranked"]), task
        if stage:
            return ranked_pairs(task["train_ranked"], stage), ranked_pairs(task["test_ranked"], stage), task
        if groups:
            return ranked_groups(task["train_ranked"]), ranked_groups(task["test_ranked"]), task
        return task["train"], task["test"], task
    if stage:
        raise ValueError(f"--curriculum_stage needs K ranked responses per prompt, which only the embedded task "
                         f"keeps here; {source} has pairs")
    train, test, task = load_pair_splits(source, held_out, seed, log, config, split, local)
    if groups and "responses" not in train.column_names:
        raise ValueError(f"this method trains on every sampled response of a prompt: {source} has no 'responses' "
                         "column (a list of K strings per record); add one, or use --data embedded")
    if triples and "gold_response" not in train.column_names:
        raise ValueError(f"this method trains on a third, gold response per pair: {source} has no 'gold_response' "
                         "column (TPO's triples: gold_response > chosen > rejected); add one, or use --data embedded")
    return train, test, task


def load_pair_splits(source, held_out, seed, log, config, split, local):
    """load_splits for files and hub sources (not the embedded task)."""
    if local:
        ds = load_preferences(source)
    else:
        train_split, test_split = hub_splits(source, split)
        ds = load_preferences(source, train_split, config)
        if test_split:
            try:
                return ds, load_preferences(source, test_split, config), None
            except (ValueError, FileNotFoundError):
                if split:                    # asked for by name: an error, not a silent hold-out
                    raise
                log(f"{source} has no {test_split!r} split: holding out {held_out:.0%} of its training pairs")
    ds = ds.shuffle(seed=seed)
    n_test = max(1, round(held_out * len(ds)))
    return ds.select(range(n_test, len(ds))), ds.select(range(n_test)), None


# ============================================================================================================
# Converters: each source's own schema -> the record schema, one row at a time
# ============================================================================================================
def source_kind(columns):
    """Which converter a table needs, from its column names alone."""
    if {"info", "summaries", "choice"} <= columns:
        return "tldr"
    if {"score_chosen", "score_rejected", "chosen", "rejected"} <= columns:
        return "ultrafeedback"
    if "article" in columns and "chosen" not in columns:
        return "prompts"
    if {"chosen", "rejected"} <= columns and "prompt" not in columns:
        return "implicit"
    return "schema"


def convert_row(kind, row, where=""):
    """One row of a source's own schema -> a record of the schema; errors name `where` (file and line)."""
    try:
        if kind == "tldr":
            return tldr_row(row)
        if kind == "ultrafeedback":
            return ultrafeedback_row(row)
        if kind == "prompts":
            return {"prompt": tldr_prompt({"article": row["article"]})}
        if kind == "implicit" and "prompt" not in row:
            return implicit_row(row)
        return row
    except (KeyError, TypeError, IndexError, ValueError) as e:
        detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{where}: {detail}; {SCHEMA_HELP}") from None


def ultrafeedback_row(row):
    """UltraFeedback binarized: `chosen`/`rejected` are [user turn, assistant turn]; the GPT-4 scores are kept."""
    return {"prompt": [m for m in row["chosen"] if m["role"] != "assistant"],
            "chosen": [m for m in row["chosen"] if m["role"] == "assistant"],
            "rejected": [m for m in row["rejected"] if m["role"] == "assistant"],
            "chosen_score": float(row["score_chosen"]), "rejected_score": float(row["score_rejected"]),
            "confidence": math.nan}


def from_ultrafeedback(ds):
    """UltraFeedback binarized rows -> schema (a Dataset)."""
    return ds.map(ultrafeedback_row, remove_columns=ds.column_names)


def tldr_prompt(info):
    """The prompt format of Stiennon et al. (2020) for a Reddit post (or a news article for CNN/DM)."""
    if info.get("post"):
        return f"SUBREDDIT: r/{info.get('subreddit') or ''}\nTITLE: {info.get('title') or ''}\nPOST: {info['post']}\nTL;DR:"
    return f"ARTICLE: {info.get('article') or ''}\nTL;DR:"


def tldr_row(row):
    """summarize_from_feedback comparisons: `choice` indexes the preferred summary; confidence kept."""
    texts = [s["text"].strip() for s in row["summaries"]]
    confidence = (row.get("extra") or {}).get("confidence")
    return {"prompt": tldr_prompt(row["info"]), "chosen": " " + texts[row["choice"]],
            "rejected": " " + texts[1 - row["choice"]],
            "confidence": math.nan if confidence is None else float(confidence)}


def from_tldr(ds):
    """summarize_from_feedback comparisons -> schema (a Dataset)."""
    return ds.map(tldr_row, remove_columns=ds.column_names)


def from_cnn_dailymail(ds):
    """CNN/DailyMail articles -> prompt-only records (the OOD prompt set for TL;DR-trained policies)."""
    return ds.map(lambda row: {"prompt": tldr_prompt({"article": row["article"]})}, remove_columns=ds.column_names)


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def hh_messages(text):
    """Anthropic HH's "\n\nHuman: ...\n\nAssistant: ..." string -> user / assistant messages (contents
    stripped); text before the first marker, if any, becomes a user message."""
    parts = HH_TURN.split("\n\n" + text.lstrip("\n"))          # ['', 'Human', q, 'Assistant', a, ...]
    messages = [{"role": "user", "content": parts[0].strip()}] if parts[0].strip() else []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def is_hh(text):
    """An Anthropic HH conversation string (starts with "Human:" after leading newlines)."""
    return isinstance(text, str) and text.lstrip("\n").startswith("Human:")


def implicit_row(row):
    """A row without a prompt: chosen and rejected are whole conversations (HH strings are split into
    messages first); their shared prefix becomes the prompt (extract_prompt). Other fields are kept."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not is_text(value):
            raise ValueError(f"field {name!r}: expected a string or a list of chat messages (each {{'role': str, "
                             f"'content': str}}), got {describe(value)}; fix or drop that row")
    if is_hh(chosen) and is_hh(rejected):
        chosen, rejected = hh_messages(chosen), hh_messages(rejected)
    prompt, chosen, rejected = extract_prompt(chosen, rejected)
    return {**row, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def extract_prompt(chosen, rejected):
    """Implicit-prompt pair -> (prompt, chosen, rejected), the prompt being their longest shared prefix.
    Messages: the shared leading messages, at most all but the last of each (every response keeps a turn).
    Strings: the shared leading characters, cut back to the whitespace before the first word they do not
    share whole, so each response starts with that whitespace (" Hello" after "Assistant:"), as a tokenizer
    would split the joined text.
    NOTE (deviates from TRL): TRL's extract_prompt backs up at most one space, which can cut a word in two
    when both responses start with the same letters ("Hel|lo" / "Hel|p"); here the cut is at a word boundary."""
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise ValueError("chosen and rejected must both be strings or both be message lists")
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise ValueError("no prompt field, and chosen and rejected share no leading message to take as the "
                             "prompt; add a prompt field")
        return chosen[:n], chosen[n:], rejected[n:]
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k in (len(chosen), len(rejected)) or not (chosen[k].isspace() and rejected[k].isspace()):
        while k > 0 and not chosen[k - 1].isspace():             # back to the start of the word in common
            k -= 1
    while k > 0 and chosen[k - 1].isspace():                     # the whitespace goes with the responses
        k -= 1
    if k == 0:
        raise ValueError("no prompt field, and chosen and rejected share no leading text to take as the prompt; "
                         "add a prompt field")
    return chosen[:k], chosen[k:], rejected[k:]


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
        if row.get("gold_response") is not None and not is_text(row["gold_response"]):
            raise ValueError(f"{where(i)}, field 'gold_response': expected a string or a list of chat messages, got "
                             f"{describe(row['gold_response'])}; fix or drop that row")
        for field in ("chosen_score", "rejected_score", "confidence"):
            value = row.get(field)
            if value is None and (field == "confidence" or "chosen_score" not in (columns or row)):
                continue
            if not is_score(value, allow_nan=field == "confidence"):
                raise ValueError(f"{where(i)}, field {field!r}: expected a finite number (or a list of them, one "
                                 f"per Oracle member), got {describe(value)}; drop or re-score that row")
        for field in ("chosen_win_rate", "rejected_win_rate"):
            value = row.get(field)
            if value is not None and not (is_score(value) and not isinstance(value, list) and 0 <= value <= 1):
                raise ValueError(f"{where(i)}, field {field!r}: expected a win rate, a number in [0, 1], got "
                                 f"{describe(value)}; drop or re-label that row")
        if "chosen_score" in row and row.get("chosen_score") is not None and (
                isinstance(row["chosen_score"], list) != isinstance(row.get("rejected_score"), list)
                or isinstance(row["chosen_score"], list) and len(row["chosen_score"]) != len(row["rejected_score"])):
            raise ValueError(f"{where(i)}: chosen_score and rejected_score must have the same shape (a number "
                             "each, or lists of one length)")


def fingerprint(ds, columns=("prompt", "chosen", "rejected")):
    """Content hash of a dataset's pairs (Dataset._fingerprint is random for in-memory datasets)."""
    h = hashlib.sha256()
    for row in ds:
        h.update(json.dumps([row[c] for c in columns if c in row]).encode())
    return h.hexdigest()[:12]


