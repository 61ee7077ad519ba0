"""Speed and memory of one training step of any method: a script that prints numbers, not a test.

    python bench.py --method dpo --model opt-125m --steps 5 --batch_size 4 --micro_batch_size 4 \
        --max_length 128 --max_prompt_length 32
    python bench.py --method drdo --model tiny --data embedded-tiny --steps 2

It times `--steps` optimizer steps (after one untimed warm-up step) of train.compute_loss + backward + AdamW
on synthetic batches of `--batch_size` pairs, every row `--max_length` tokens of which `--max_prompt_length`
are prompt, and prints one JSON line: step time, tokens/s and peak memory (CUDA: max allocated; CPU: peak
RSS of the process). Reference log-probs and Oracle scores are random constants: in real runs they are
cached on disk, so they cost nothing inside the loop, as here. Without hub access, --model opt-125m /
opt-350m / opt-1.3b time a random-init model of the same architecture (same cost).
These machines drift in speed: compare two settings only by interleaving their runs.
"""
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

import train
from common import parse_config, quiet_transformers
from config import LIMITS, resolve
from embedded import EMBEDDED_PRESETS, embedded_task
from models import HUB_MODELS, add_reward_head, load_model

OPT_SIZES = {"opt-125m": (768, 12, 12), "opt-350m": (1024, 24, 16), "opt-1.3b": (2048, 24, 32)}  # d, layers, heads


@dataclass
class BenchConfig(train.Config):
    steps: int = 5                 # timed optimizer steps (one untimed warm-up step runs first)


def bench_model(cfg, log=print):
    """The model to time: cfg.model, or a random-init model of its architecture when the hub is unreachable."""
    task_ref = (embedded_task(EMBEDDED_PRESETS[cfg.data], log=lambda *_: None)["reference"]
                if cfg.data in EMBEDDED_PRESETS else None)
    try:
        model, _ = load_model(cfg.model, task_ref)
    except ValueError as e:
        if cfg.model not in HUB_MODELS:
            raise
        from transformers import OPTConfig, OPTForCausalLM
        d, layers, heads = OPT_SIZES[cfg.model]
        log(f"{str(e).splitlines()[0]}\n-> timing a random-init {cfg.model} ARCHITECTURE instead (same cost)")
        model = OPTForCausalLM(OPTConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                         ffn_dim=4 * d, word_embed_proj_dim=d if d != 1024 else 512,
                                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))
    if train.uses_reward_head(cfg):
        add_reward_head(model)
    return model


def bench(cfg, log=print):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = bench_model(cfg, log).to(device).train()
    V, B, T, P = model.config.vocab_size, cfg.micro_batch_size, cfg.max_length, cfg.max_prompt_length
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, V, (2 * B, T), generator=gen),                 # (2B, T)
             "attention_mask": torch.ones(2 * B, T, dtype=torch.long),                    # (2B, T)
             "loss_mask": torch.cat([torch.zeros(2 * B, P), torch.ones(2 * B, T - P)], 1).long(),
             "ref_chosen": -torch.rand(B, generator=gen) * 50, "ref_rejected": -torch.rand(B, generator=gen) * 50,
             "chosen_scores": torch.randn(cfg.ensemble, B, generator=gen),               # (K, B)
             "rejected_scores": torch.randn(cfg.ensemble, B, generator=gen)}
    batch = train.to_device(batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    accum = cfg.batch_size // cfg.micro_batch_size
    times = []
    for i in range(cfg.steps + 1):                             # step 0 is a warm-up and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(accum):
            with train.autocast(cfg, device):
                losses, _, _ = train.compute_loss(cfg, model, batch)
            (losses.float().sum() / cfg.batch_size).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    t = torch.tensor(times)
    tokens = 2 * cfg.batch_size * T
    return {"method": cfg.method, "model": cfg.model, "params_M": round(n_params / 1e6, 2),
            "pairs_per_step": cfg.batch_size, "tokens_per_step": tokens, "step_s": t.mean().item(),
            "step_s_std": t.std().item() if len(t) > 1 else 0.0, "tokens_per_s": tokens / t.mean().item(),
            "peak_memory_GB": round(peak, 2),
            "memory": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
            "dtype": "bf16 autocast" if cfg.bf16 or device.type == "cuda" else "fp32", "device": device.type,
            "threads": torch.get_num_threads()}


def main(argv=None):
    cfg = parse_config(BenchConfig, argv, description=__doc__.split("\n\n")[0])
    try:
        cfg = resolve(cfg, {**LIMITS, "steps": "[1, inf)"})
    except ValueError as e:
        sys.exit(f"error: {e}")
    quiet_transformers()
    print(json.dumps(asdict(cfg)), file=sys.stderr)
    res = bench(cfg, log=lambda *a: print(*a, file=sys.stderr))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
