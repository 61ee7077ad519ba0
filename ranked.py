"""The embedded task's K ranked samples per prompt, made into what each method trains on.

The embedded task keeps every prompt's K samples from pi_ref with their gold scores ({"prompt", "responses",
"scores"}: embedded.embedded_task's train_ranked / test_ranked). Best-vs-worst pairs are the default data; these
functions build the other shapes from the same samples, each a datasets.Dataset with chosen_gold / rejected_gold:
  ranked_triples     TPO's triples: gold_response (best) > chosen (second) > rejected (worst)
  ranked_pairs       Curry-DPO's stage k: the best against the k-th worst (curriculum.py)
  ranked_all_pairs   every pair whose scores differ (oracle.py --pairs all: a stronger Oracle)
  ranked_groups      BRAIn's groups: all K responses, with the best and the worst as the pair
data.load_splits chooses among them; nothing here reads files or the hub.
"""


def ranked_triples(ranked):
    """K samples per prompt with their scores -> TPO's triples, as the TPO authors build them from UltraFeedback:
    gold_response = the best, chosen = the second best, rejected = the worst (chosen_gold / rejected_gold: their
    scores). Prompts whose second-best and worst tie, or with an empty response among the three, are dropped."""
    import datasets
    rows = []
    for r in ranked:
        order = sorted(range(len(r["scores"])), key=lambda i: -r["scores"][i])
        if len(order) < 3:
            raise ValueError(f"TPO's triples need at least 3 responses per prompt; got {len(order)}")
        best, second, worst = order[0], order[1], order[-1]
        texts = [r["responses"][i] for i in (best, second, worst)]
        if r["scores"][second] > r["scores"][worst] and all(t.strip() for t in texts):
            rows.append({"prompt": r["prompt"], "gold_response": texts[0], "chosen": texts[1], "rejected": texts[2],
                         "chosen_gold": r["scores"][second], "rejected_gold": r["scores"][worst]})
    if not rows:
        raise ValueError("no prompt has three ranked responses with second-best > worst")
    return datasets.Dataset.from_list(rows)


def ranked_pairs(ranked, stage):
    """Curry-DPO's stage `stage` of K ranked responses per prompt: the best against the stage-th worst, so stage
    1 (best vs worst, the largest gap) is the easiest and stage K-1 (best vs second best) the hardest. Pairs
    whose two responses tie, or with an empty one, are dropped. -> a Dataset of pairs (+ chosen_gold,
    rejected_gold: their scores)."""
    import datasets
    rows = []
    for r in ranked:
        K = len(r["scores"])
        if not 1 <= stage <= K - 1:
            raise ValueError(f"--curriculum_stage {stage}: with K = {K} responses per prompt the stages are 1..{K - 1}")
        order = sorted(range(K), key=lambda i: -r["scores"][i])
        best, other = order[0], order[K - stage]
        texts = r["responses"][best], r["responses"][other]
        if r["scores"][best] > r["scores"][other] and all(t.strip() for t in texts):
            rows.append({"prompt": r["prompt"], "chosen": texts[0], "rejected": texts[1],
                         "chosen_gold": r["scores"][best], "rejected_gold": r["scores"][other]})
    if not rows:
        raise ValueError(f"curriculum stage {stage}: no prompt has a best response above its stage-{stage} one")
    return datasets.Dataset.from_list(rows)


def ranked_all_pairs(ranked):
    """Every pair of each prompt's K ranked responses whose scores differ, the higher-scored one chosen: up to
    K(K-1)/2 pairs per prompt where best-vs-worst keeps one (with K = 4 about 5x the comparisons, from the same
    samples). Pairs with an empty response are dropped. -> a Dataset of pairs (+ chosen_gold, rejected_gold).
    oracle.py --pairs all trains a stronger Oracle on these; the policy still trains on best-vs-worst."""
    import datasets
    rows = []
    for r in ranked:
        s, texts = r["scores"], r["responses"]
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if s[i] == s[j] or not (texts[i].strip() and texts[j].strip()):
                    continue
                w, l = (i, j) if s[i] > s[j] else (j, i)
                rows.append({"prompt": r["prompt"], "chosen": texts[w], "rejected": texts[l],
                             "chosen_gold": s[w], "rejected_gold": s[l]})
    if not rows:
        raise ValueError("no prompt has two responses with different scores")
    return datasets.Dataset.from_list(rows)


def ranked_groups(ranked):
    """BRAIn's groups: each prompt's K responses (`responses`), with the pair machinery's chosen / rejected the
    best and the worst by score (what the Oracle trains on; chosen_gold / rejected_gold their scores). Prompts
    whose best and worst tie, or with an empty response, are dropped."""
    import datasets
    rows = []
    for r in ranked:
        order = sorted(range(len(r["scores"])), key=lambda i: -r["scores"][i])
        best, worst = order[0], order[-1]
        if r["scores"][best] > r["scores"][worst] and all(t.strip() for t in r["responses"]):
            rows.append({"prompt": r["prompt"], "chosen": r["responses"][best], "rejected": r["responses"][worst],
                         "responses": list(r["responses"]), "chosen_gold": r["scores"][best],
                         "rejected_gold": r["scores"][worst]})
    if not rows:
        raise ValueError("no prompt has K non-empty responses whose best is above its worst")
    return datasets.Dataset.from_list(rows)
