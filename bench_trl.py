"""TRL's DPOTrainer on bench.py's synthetic pairs: the comparison row of bench.py --speed_table (a script that
prints numbers; TRL is not a dependency of this project: pip install --no-deps trl==1.16.0).

    python bench_trl.py --model opt-125m --shape tldr --steps 3 --batch_size 4 --max_length 256 --max_prompt_length 224
    python bench_trl.py ... --precompute        # TRL with precompute_ref_log_probs=True (no reference forward per step)

The same pairs as bench.py's (bench.synthetic_pairs, same seed), the same model (a random-init OPT of the named
architecture without hub access), the same loss (sigmoid DPO, beta 0.1), the same optimizer (AdamW): TRL's own
Trainer loop runs `--steps` + 1 optimizer steps and each step's time is the gap between two consecutive
on_step_end callbacks (collation, the reference forward when not precomputed, forward, backward, AdamW), the
first step untimed. TRL reads text, so the pairs are written as words "w<id>" of a word-level tokenizer whose
word w<id> is token id <id>: TRL's tokenization gives back exactly bench.py's token ids (checked here).
Each configuration in its own process (peak RSS is per process); bench.py --speed_table interleaves them.
"""
import copy
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

import bench
from common import parse_config, quiet_transformers


@dataclass
class TRLBenchConfig:
    model: str = "opt-125m"        # an architecture of bench.OPT_SIZES (random init without hub access)
    shape: str = "tldr"            # fixed | tldr | ultrafeedback (bench.synthetic_pairs)
    steps: int = 3                 # timed optimizer steps (one untimed warm-up step runs first)
    batch_size: int = 4            # pairs per step (one micro-batch)
    max_length: int = 256
    max_prompt_length: int = 224
    precompute: bool = False       # TRL's precompute_ref_log_probs=True (its reference log-probs before training)


SPECIAL = {bench.PAD_ID: "<pad>", bench.EOS_ID: "</s>"}   # special tokens match anywhere in a text, so no word
                                                            # may contain them: they get names of their own


def word(i):
    return SPECIAL.get(i, f"w{i}")


def word_tokenizer(vocab):
    """A word-level tokenizer whose word w<i> is token id i (EOS </s> and pad <pad> at bench's ids), split on
    whitespace only: TRL's tokenization of the text gives back the ids it was written from."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({word(i): i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=word(bench.EOS_ID), pad_token=word(bench.PAD_ID))


def as_text(ids):
    return " ".join(word(i) for i in ids)


def run(cfg):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    base_cfg = bench.BenchConfig(model=cfg.model)
    model = bench.bench_model(base_cfg, log=lambda *a: print(*a, file=sys.stderr))
    vocab = model.config.vocab_size
    n = (cfg.steps + 1) * cfg.batch_size
    pairs = bench.synthetic_pairs(cfg.shape, n, cfg.max_length, cfg.max_prompt_length, vocab)
    tokenizer = word_tokenizer(vocab)
    rows = [{"prompt": as_text(p["prompt_ids"]), "chosen": " " + as_text(p["chosen_ids"]),
             "rejected": " " + as_text(p["rejected_ids"])} for p in pairs]
    for row, pair in zip(rows, pairs):                                 # the text is the ids, token for token
        assert tokenizer(row["prompt"] + row["rejected"])["input_ids"] == pair["prompt_ids"] + pair["rejected_ids"]

    ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
                         max_steps=cfg.steps + 1, learning_rate=1e-6, beta=0.1, loss_type=["sigmoid"],
                         max_length=None, precompute_ref_log_probs=cfg.precompute,
                         precompute_ref_batch_size=cfg.batch_size, logging_steps=10_000, save_strategy="no",
                         report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                         dataloader_num_workers=0, seed=0, bf16=torch.cuda.is_available())
        ref = None if cfg.precompute else copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[StepTimes()])
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
        trainer.train()
    times = torch.tensor([b - a for a, b in zip(ends, ends[1:])])
    tokens = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs[cfg.batch_size:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"trainer": "trl " + __import__("trl").__version__, "precompute_ref_log_probs": cfg.precompute,
            "model": cfg.model, "shape": cfg.shape, "pairs_per_step": cfg.batch_size,
            "tokens_per_step": tokens / cfg.steps, "step_s": times.mean().item(),
            "step_s_std": times.std().item() if len(times) > 1 else 0.0, "tokens_per_s": tokens / times.sum().item(),
            "peak_memory_GB": round(peak, 3), "memory": "process peak RSS", "threads": torch.get_num_threads()}


def main(argv=None):
    cfg = parse_config(TRLBenchConfig, sys.argv[1:] if argv is None else argv, description=__doc__.split("\n\n")[0])
    quiet_transformers()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if importlib.util.find_spec("trl") is None:
        sys.exit("error: bench_trl.py needs TRL (not a dependency of this project): pip install --no-deps trl==1.16.0")
    res = run(cfg)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
