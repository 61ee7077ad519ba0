"""The training condition of a run: the DRDO paper's non-deterministic / deterministic splits and label noise,
applied to records of data.py's schema (datasets.Dataset) before anything is tokenized.

    split_by_margin   deterministic vs non-deterministic pairs by the size of a score (or gold) margin
    tldr_splits       DRDO's TL;DR splits by annotator confidence x edit distance
    flip_labels       swap chosen and rejected on a seeded share of pairs; scores move with their texts
    apply_condition   the three above, in the order train.py applies them (--split, --max_pairs, --flip)

Run `pytest -q test_data.py -k "flip or split or edit"` to check them on hand-made tables.
"""
import math
import random

import torch


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
