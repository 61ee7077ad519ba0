"""Speed and memory of one training step of any method: a script that prints numbers, not a test.

    python bench.py --method dpo --model opt-125m --steps 5 --batch_size 4 --micro_batch_size 4 \
        --max_length 128 --max_prompt_length 32                       # one configuration: one JSON line
    python bench.py --method drdo --model opt-125m --lora_r 16 --gradient_checkpointing --steps 3
    python bench.py --table --model opt-125m --steps 2                # full / LoRA / LoRA + checkpointing,
                                                                      # each in its own process; a markdown table
    python bench.py --budget                                          # computed memory of opt-1.3b and a 7B model
                                                                      # in bf16 on a 24 GB GPU
    python bench.py --online_step --steps 5                           # one per-step online round (online.py): sample
                                                                      # batch_size prompts x 4, label, one step

One configuration: `--steps` optimizer steps (after one untimed warm-up step) of objective.compute_loss + backward
+ AdamW on synthetic batches of `--batch_size` pairs, every row `--max_length` tokens of which
`--max_prompt_length` are prompt; peak memory is CUDA's max allocated, or the process's peak RSS on CPU.
Reference log-probs and Oracle scores are constants, as in real runs, where they are cached on disk;
`--live_reference` instead runs a frozen reference forward every micro-batch (what a trainer without cached
reference log-probs does, e.g. TRL's DPOTrainer by default): the baseline of the memory goal in the README.
`--full_logits` computes the LM head at every position (as with transformers < 5) to measure what computing
it on completion positions only saves. Without hub access, --model opt-125m / opt-350m / opt-1.3b time a
random-init model of the same architecture (same cost).
These machines drift in speed: compare two settings only within one --table run (interleaved), as ratios.
"""
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

import models
import objective
import packing
import tokenization
import train
from common import parse_config, quiet_transformers
from config import LIMITS, resolve
from embedded import EMBEDDED_PRESETS, embedded_task

OPT_SIZES = {"opt-125m": (768, 12, 12), "opt-350m": (1024, 24, 16), "opt-1.3b": (2048, 24, 32)}  # d, layers, heads


@dataclass
class BenchConfig(train.Config):
    steps: int = 5                 # timed optimizer steps (one untimed warm-up step runs first)
    live_reference: bool = False   # run a frozen reference forward each micro-batch (no cached log-probs)
    full_logits: bool = False      # LM head at every position (the comparison for logits-at-completions-only)
    table: bool = False            # run the memory/speed table for --model (each row its own process) and print it
    budget: bool = False           # print the computed memory budget of opt-1.3b and a 7B model on a 24 GB GPU
    rounds: int = 2                # --table: every row runs this many times, interleaved; min time, max memory
    shape: str = "fixed"           # pair lengths: fixed (every row max_length, max_prompt_length of it prompt), tldr
                                   # (prompt ~4x response) or ultrafeedback (long-tailed); see synthetic_pairs
    speed_table: bool = False      # the packing table: --packing off/prefix/rows/both vs TRL's DPOTrainer (bench_trl.py)
    online_step: bool = False      # time per-step online DPO (online.py, one optimizer step per round) on the embedded
                                   # task's model: seconds per round and its split sample / label / train


PAD_ID, EOS_ID = 1, 2      # OPT's; synthetic tokens are drawn from 3 .. V - 1
SHAPES = ("fixed", "tldr", "ultrafeedback")


def synthetic_pairs(shape, n, max_length, max_prompt_length, vocab, seed=0):
    """n pairs {"prompt_ids", "chosen_ids", "rejected_ids"} of random tokens, each response closed by EOS_ID,
    with lengths (P, R_chosen, R_rejected), seeded, and P + max(R) <= max_length:
        fixed          P = max_prompt_length, R = max_length - P for both responses (every row full length)
        tldr           R ~ U[0.6, 1] x max_length / 5 each; P = 4 x their mean x U[0.8, 1.2], capped at the room left
                       (TL;DR: a Reddit post, about 4x its summary)
        ultrafeedback  P ~ lognormal(median max_length / 8, sigma 0.8), R ~ lognormal(median max_length / 5, sigma
                       0.8) each, clipped to [4, room left]: a long tail, lengths varying ~10x within a batch"""
    g = torch.Generator().manual_seed(seed)
    u = lambda: torch.rand((), generator=g).item()                                     # noqa: E731
    lognormal = lambda median: median * math.exp(0.8 * torch.randn((), generator=g).item())   # noqa: E731
    T, out = max_length, []
    for _ in range(n):
        if shape == "fixed":
            P, rc, rr = max_prompt_length, T - max_prompt_length, T - max_prompt_length
        elif shape == "tldr":
            rc, rr = (max(2, round((0.6 + 0.4 * u()) * T / 5)) for _ in range(2))
            P = max(1, min(max_prompt_length, T - max(rc, rr), round(4 * (rc + rr) / 2 * (0.8 + 0.4 * u()))))
        elif shape == "ultrafeedback":
            P = max(4, min(max_prompt_length, round(lognormal(T / 8))))
            rc, rr = (max(4, min(T - P, round(lognormal(T / 5)))) for _ in range(2))
        else:
            raise ValueError(f"--shape must be one of {', '.join(SHAPES)}; got {shape!r}")
        ids = lambda k: torch.randint(3, vocab, (k,), generator=g).tolist()          # noqa: E731
        out.append({"prompt_ids": ids(P), "chosen_ids": ids(rc - 1) + [EOS_ID], "rejected_ids": ids(rr - 1) + [EOS_ID]})
    return out


def bench_model(cfg, log=print):
    """The model to time: cfg.model, or a random-init model of its architecture when the hub is unreachable."""
    task_ref = (embedded_task(EMBEDDED_PRESETS[cfg.data], log=lambda *_: None)["reference"]
                if cfg.data in EMBEDDED_PRESETS else None)
    try:
        return models.load_model(cfg.model, task_ref)[0]
    except ValueError as e:
        if cfg.model not in models.HUB_MODELS:
            raise
        from transformers import OPTConfig, OPTForCausalLM
        d, layers, heads = OPT_SIZES[cfg.model]
        log(f"{str(e).splitlines()[0]}\n-> timing a random-init {cfg.model} ARCHITECTURE instead (same cost)")
        return OPTForCausalLM(OPTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                        ffn_dim=4 * d, word_embed_proj_dim=d if d != 1024 else 512,
                                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))


@contextlib.contextmanager
def saved_tensors(into):
    """Record the storage (id -> bytes) of every tensor autograd keeps for backward inside the block: the
    activation memory a GPU holds from the forward pass to the backward pass. Under gradient checkpointing
    the layers' own saved tensors are dropped by checkpointing and not seen here (a lower bound: one layer's
    are recomputed at a time in backward)."""
    def pack(t):
        storage = t.untyped_storage()
        into[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def bench(cfg, log=print):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models.PACK_LOGITS = not cfg.full_logits
    base = bench_model(cfg, log)
    reference = None
    if cfg.live_reference and not cfg.lora_r:              # a second, frozen copy (LoRA: the adapters-off model)
        import copy
        reference = copy.deepcopy(base).to(device).eval().requires_grad_(False)
    model = train.prepare_policy(base, cfg, device=device).train()
    models.PACKING = cfg.packing
    V, B = model.config.vocab_size, cfg.micro_batch_size
    accum = cfg.batch_size // cfg.micro_batch_size
    pairs = synthetic_pairs(cfg.shape, (cfg.steps + 1) * cfg.batch_size, cfg.max_length, cfg.max_prompt_length, V)
    gen = torch.Generator().manual_seed(0)
    consts = {"ref_chosen": -torch.rand(B, generator=gen) * 50, "ref_rejected": -torch.rand(B, generator=gen) * 50,
              "chosen_scores": torch.randn(cfg.ensemble, B, generator=gen),               # (K, B)
              "rejected_scores": torch.randn(cfg.ensemble, B, generator=gen)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    times, saved, tokens, padded = [], {}, 0, 0
    for i in range(cfg.steps + 1):                             # step 0 is a warm-up and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for a in range(accum):
            part = pairs[(i * accum + a) * B:(i * accum + a + 1) * B]
            batch = models.to_device({**tokenization.collate(part, PAD_ID), **consts}, device)   # in the timing
            if i:
                tokens += int(batch["attention_mask"].sum())  # real tokens: the data's, however it is packed
                padded += batch["attention_mask"].numel()
            if cfg.live_reference:                             # what caching the reference log-probs avoids
                with torch.no_grad(), models.autocast(cfg, device), \
                        (model.disable_adapter() if cfg.lora_r else torch.autocast(device.type, enabled=False)):
                    c, r = models.pair_logps(reference or model, batch, train.loss_entry(cfg.method).average_logps)["logps"]
                batch["ref_chosen"], batch["ref_rejected"] = c.float(), r.float()
            with models.autocast(cfg, device), saved_tensors(saved if i == 0 else {}):
                losses, _, _ = objective.compute_loss(cfg, model, batch)
            (losses.float().sum() / cfg.batch_size).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)        # noqa: E731
    tensors = {"weights": nbytes(model.parameters()) + (nbytes(reference.parameters()) if reference else 0),
               "gradients": nbytes(trainable),
               "optimizer": sum(nbytes(v for v in st.values() if torch.is_tensor(v)) for st in opt.state.values()),
               "activations": sum(saved.values())}
    t = torch.tensor(times)
    return {"method": cfg.method, "model": cfg.model, "shape": cfg.shape, "packing": cfg.packing, "lora_r": cfg.lora_r,
            "gradient_checkpointing": cfg.gradient_checkpointing, "live_reference": cfg.live_reference,
            "full_logits": cfg.full_logits, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "trainable_M": round(sum(p.numel() for p in trainable) / 1e6, 3), "pairs_per_step": cfg.batch_size,
            "tokens_per_step": tokens / cfg.steps,
            "padded_tokens_per_step": padded / cfg.steps, "step_s": t.mean().item(),
            "step_s_std": t.std().item() if len(t) > 1 else 0.0, "tokens_per_s": tokens / t.sum().item(), "peak_memory_GB": round(peak, 3),
            "tensor_memory_MB": sum(tensors.values()) / 2**20, **{f"{k}_MB": v / 2**20 for k, v in tensors.items()},
            "memory": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
            "dtype": "bf16 autocast" if cfg.bf16 or device.type == "cuda" else "fp32", "device": device.type,
            "threads": torch.get_num_threads()}


# ============================================================================================================
# The table: every row in its own process (peak RSS is per process), rows interleaved by repetition
# ============================================================================================================
ROWS = {   # name -> flags; the goal compares drdo + LoRA with dpo full fine-tuning and a live reference
    "dpo, full, live reference": ["--method", "dpo", "--live_reference"],
    "dpo, full, cached reference": ["--method", "dpo"],
    "drdo, full": ["--method", "drdo"],
    "drdo, LoRA r=16": ["--method", "drdo", "--lora_r", "16"],
    "drdo, LoRA r=16 + checkpointing": ["--method", "drdo", "--lora_r", "16", "--gradient_checkpointing"],
    "dpo, LoRA r=16 (cached reference)": ["--method", "dpo", "--lora_r", "16"],
    "dpo, LoRA r=16 + checkpointing": ["--method", "dpo", "--lora_r", "16", "--gradient_checkpointing"],
    "dpo, full, full logits": ["--method", "dpo", "--full_logits"],
}


def interleaved(commands, rounds, log=print):
    """name -> command line; every row in its own process, all rows once per round (A, B, C, ..., A, B, C, ...),
    so slow minutes of a shared machine hit every row alike; each row keeps its fastest step time (and the
    tokens/s that goes with it) and its largest peak memory. -> name -> the row's JSON result."""
    results = {}
    for round_ in range(rounds):
        for name, command in commands.items():
            r = subprocess.run(command, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"{name}: {r.stderr[-2000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            if name in results:
                res["step_s"] = min(res["step_s"], results[name]["step_s"])
                res["tokens_per_s"] = res["tokens_per_step"] / res["step_s"]
                res["peak_memory_GB"] = max(res["peak_memory_GB"], results[name]["peak_memory_GB"])
            results[name] = res
            log(f"round {round_ + 1}, {name}: {res['step_s']:.2f} s/step, {res['tokens_per_s']:.0f} tokens/s, "
                f"{res['peak_memory_GB']:.2f} GB")
    return results


def table(cfg, argv, log=print):
    """The memory/speed table: ROWS interleaved (interleaved)."""
    shared = [a for a in argv if a not in ("--table",)]
    results = interleaved({name: [sys.executable, __file__, *shared, *flags] for name, flags in ROWS.items()},
                          cfg.rounds, log)
    base = results["dpo, full, live reference"]
    lines = [f"| {cfg.model}, {cfg.batch_size} pairs x {cfg.max_length} tokens ({cfg.max_prompt_length} prompt), "
             f"{base['dtype']} | trainable (M) | s / step | tokens / s | tensor memory (MB): weights + gradients + "
             "AdamW + activations | vs dpo live ref | process peak RSS (GB) | time vs dpo live ref |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        parts = " + ".join(f"{res[k + '_MB']:.0f}" for k in ("weights", "gradients", "optimizer", "activations"))
        lines.append(f"| {name} | {res['trainable_M']:.2f} | {res['step_s']:.2f} | {res['tokens_per_s']:.0f} | "
                     f"{res['tensor_memory_MB']:.0f} = {parts} | {res['tensor_memory_MB'] / base['tensor_memory_MB']:.2f} | "
                     f"{res['peak_memory_GB']:.2f} | {res['step_s'] / base['step_s']:.2f} |")
    print("\n".join(lines))
    return results


# ============================================================================================================
# The packing table: this project with each --packing against TRL's DPOTrainer, on one shape of data
# ============================================================================================================
def speed_rows(cfg):
    """name -> command line of each row (one process each): DPO, full fine-tuning, cached reference log-probs."""
    shared = ["--model", cfg.model, "--shape", cfg.shape, "--steps", str(cfg.steps), "--batch_size",
              str(cfg.batch_size), "--max_length", str(cfg.max_length), "--max_prompt_length", str(cfg.max_prompt_length)]
    ours = [sys.executable, __file__, "--method", "dpo", "--micro_batch_size", str(cfg.batch_size), *shared]
    theirs = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_trl.py"), *shared]
    return {"TRL 1.16 DPOTrainer (default: reference forward every step)": theirs,
            "TRL 1.16 DPOTrainer, precompute_ref_log_probs": [*theirs, "--precompute"],
            **{f"this project, --packing {mode}": [*ours, "--packing", mode] for mode in packing.MODES}}


def speed_table(cfg, log=print):
    """speed_rows interleaved (interleaved); ratios are against the two TRL rows."""
    rows = speed_rows(cfg)
    results = interleaved(rows, cfg.rounds, log)
    names = list(rows)
    trl, trl_pre = results[names[0]], results[names[1]]
    any_row = results[names[2]]
    lines = [f"| {cfg.model}, {cfg.shape}-shaped, {cfg.batch_size} pairs/step, max {cfg.max_length} tokens, "
             f"{any_row['dtype']}, {any_row['threads']} thread(s) | real tokens / s | vs TRL default | "
             "vs TRL precomputed | process peak RSS (GB) | memory vs TRL default |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        lines.append(f"| {name} | {res['tokens_per_s']:.0f} | {res['tokens_per_s'] / trl['tokens_per_s']:.2f}x | "
                     f"{res['tokens_per_s'] / trl_pre['tokens_per_s']:.2f}x | {res['peak_memory_GB']:.2f} | "
                     f"{res['peak_memory_GB'] / trl['peak_memory_GB']:.2f} |")
    lines.append(f"(real tokens per step: {any_row['tokens_per_step']:.0f}; padded rows would hold "
                 f"{any_row['padded_tokens_per_step']:.0f})")
    print("\n".join(lines))
    return results


# ============================================================================================================
# The computed budget for a GPU (bf16 autocast; formulas in the README)
# ============================================================================================================
HEADROOM_GB = 2.0          # the CUDA context, the allocator's fragmentation, temporary buffers: not computed
ARCHS = {   # name: parameters, layers, hidden size, vocabulary
    "opt-1.3b": (1.316e9, 24, 2048, 50272),
    "7B (Llama-2-7B shape)": (6.74e9, 32, 4096, 32000),
}


def budget(pairs=1, tokens=1024, completion=512, lora_r=16, gpu_gb=24):
    """Memory of one training micro-batch of `pairs` pairs (2 * pairs rows of `tokens` tokens) -> table rows.

    full fine-tuning  fp32 master weights 4 + fp32 gradients 4 + AdamW moments 8 = 16 bytes per parameter
    LoRA              frozen base in bf16, 2 bytes per parameter; adapters (r * (d_in + d_out) per linear
                      layer; about 7 * 2 * r * d per layer for a Llama block) at 16 bytes per parameter
    activations       without checkpointing ~34 bytes per token per layer per hidden unit (bf16, fused
                      attention; Korthikanti et al. 2022, arXiv 2205.05198, Sec. 4); with checkpointing the
                      layer inputs (2 bytes per hidden unit per token per layer) plus one layer's 34
    logits            bf16 logits + their fp32 log-sum-exp work, 6 bytes per vocabulary entry, at the
                      completion positions only (this repository), or at every position
    """
    rows = []
    for name, (n, layers, d, vocab) in ARCHS.items():
        toks = 2 * pairs * tokens
        act_full = 34 * toks * d * layers
        act_ckpt = 2 * toks * d * layers + 34 * toks * d
        logits_packed = 6 * 2 * pairs * completion * vocab
        adapters = 7 * 2 * lora_r * d * layers
        for label, weights, act in (
                ("full fine-tune", 16 * n, act_full), ("full + checkpointing", 16 * n, act_ckpt),
                ("LoRA", 2 * n + 16 * adapters, act_full), ("LoRA + checkpointing", 2 * n + 16 * adapters, act_ckpt)):
            total = (weights + act + logits_packed) / 2**30
            rows.append((name, label, weights / 2**30, act / 2**30, logits_packed / 2**30, total,
                         total + HEADROOM_GB <= gpu_gb))
    return rows


def print_budget(pairs=1, tokens=1024, completion=512, lora_r=16, gpu_gb=24):
    print(f"| model | setting | weights + grads + optimizer (GB) | activations (GB) | logits (GB) | total (GB) | "
          f"fits {gpu_gb} GB |\n|---|---|---|---|---|---|---|")
    for name, label, w, a, lg, total, fits in budget(pairs, tokens, completion, lora_r, gpu_gb):
        print(f"| {name} | {label} | {w:.1f} | {a:.1f} | {lg:.1f} | {total:.1f} | {'yes' if fits else 'no'} |")
    print(f"(micro-batch of {pairs} pair = {2 * pairs} rows x {tokens} tokens, {completion} of them completion; "
          f"LoRA r = {lora_r}; 'fits' leaves {HEADROOM_GB:g} GB for the CUDA context and fragmentation)")


def online_step(cfg, log=print):
    """--online_step: `--steps` + 1 rounds of per-step online DPO (online.py: sample --batch_size prompts x 4 from
    pi_t, label them with the frozen Oracle, one optimizer step; no judging), the first untimed -> a dict: median
    seconds per round, the shares of sampling / labelling / training (train.py's whole run: data, pi_t's log-probs,
    the step, the checkpoint) and generation tokens/s. The embedded task's model (or tiny); not the random-init
    OPTs, which cannot sample anything meaningful."""
    import statistics
    import tempfile

    import online
    out = tempfile.mkdtemp(prefix="bench-online-")
    result = online.main(["--method", "dpo", "--data", cfg.data, "--model", cfg.model, "--rounds", str(cfg.steps + 1),
                          "--prompts_per_round", str(cfg.batch_size), "--batch_size", str(cfg.batch_size),
                          "--micro_batch_size", str(cfg.micro_batch_size), "--epochs", "1", "--eval_prompts", "0",
                          "--eval_every", "0", "--keep_rounds", "2", "--seed", str(cfg.seed), "--out", out])
    rounds = result["rounds"][1:]
    seconds = [r["seconds"] for r in rounds]
    total = {k: sum(s[k] for s in seconds) for k in ("sample", "label", "train")}
    tokens = sum(r["sampling"]["generated_tokens"] for r in rounds)
    return {"online_step_seconds": statistics.median(sum(s[k] for k in total) for s in seconds),
            **{f"share_{k}": round(v / sum(total.values()), 3) for k, v in total.items()},
            "generation_tokens_per_second": round(tokens / total["sample"], 1), "rounds": len(rounds),
            "prompts_per_round": cfg.batch_size, "samples_per_prompt": 4, "model": cfg.model, "out": out}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(BenchConfig, argv, description=__doc__.split("\n\n")[0])
    if cfg.budget:
        return print_budget()
    try:
        cfg = resolve(cfg, {**LIMITS, "steps": "[1, inf)", "rounds": "[1, inf)"})
    except ValueError as e:
        sys.exit(f"error: {e}")
    if cfg.shape not in SHAPES:
        sys.exit(f"error: --shape must be one of {', '.join(SHAPES)}; got {cfg.shape!r}")
    quiet_transformers()
    if cfg.table:
        return table(cfg, argv, log=lambda *a: print(*a, file=sys.stderr))
    if cfg.speed_table:
        return speed_table(cfg, log=lambda *a: print(*a, file=sys.stderr))
    if cfg.online_step:
        res = online_step(cfg)
        print(json.dumps(res))
        return res
    print(json.dumps(asdict(cfg)), file=sys.stderr)
    res = bench(cfg, log=lambda *a: print(*a, file=sys.stderr))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
