"""The options of a training run: one @dataclass whose field comments are the --help text, the valid range or
values of every option, and the defaults that depend on other options. train.py, bench.py and the tutorials
build their runs from it; `python train.py --help` prints it.

Every option is checked by `resolve` before any work starts (one message naming the flag, the value and
the range); `resume_command` turns a resolved config back into the command line that continues its run.
"""
import os
from dataclasses import asdict, dataclass, replace

import packing
from common import check_ranges
from losses import FDPO_DIVERGENCES, LOSSES, loss_entry, parse_loss_weights
from runlog import check_report_to


# Valid ranges of the numeric options ("[" inclusive, "(" exclusive; common.check_ranges), and the values a
# string option may take: all checked before any work starts, whatever the method.
LIMITS = {
    "flip": "[0, 1]", "max_pairs": "[0, inf)", "max_length": "[2, inf)", "max_prompt_length": "[1, inf)",
    "beta": "(0, inf)", "label_smoothing": "[0, 0.5)", "kl_coef": "[0, inf)", "ensemble": "[0, inf)",
    "simpo_beta": "(0, inf)", "simpo_gamma": "[0, inf)", "orpo_beta": "[0, inf)", "alpha": "[0, inf)",
    "gamma": "[0, inf)", "beta_r": "(0, inf)", "distill_weight": "[0, inf)", "oracle_alpha": "[0, inf)",
    "oracle_epochs": "[1, inf)", "oracle_lr": "(0, inf)", "lr": "[0, inf)", "batch_size": "[1, inf)",
    "micro_batch_size": "[1, inf)", "epochs": "(0, inf)", "warmup": "[0, 1]", "weight_decay": "[0, inf)",
    "max_grad_norm": "[0, inf)", "seed": "[0, inf)", "eval_every": "[0, inf)", "save_every": "[1, inf)",
    "save_total_limit": "[1, inf)", "stop_after": "[0, inf)", "exo_epsilon": "(0, 0.5)", "discopop_tau": "(0, 1]",
    "fdpo_alpha": "(0, 1)", "cpo_alpha": "[0, inf)", "kto_desirable_weight": "[0, inf)",
    "kto_undesirable_weight": "[0, inf)", "ld_alpha": "[0, 1]", "aot_label_smoothing": "[0, 0.5)",
    "madpo_c_min": "(0, 1)", "madpo_c_max": "(1, inf)", "adpo_temperature": "(0, inf)", "asft_lambda": "[0, inf)",
    "modpo_w0": "(0, 1]", "tpo_beta": "(0, inf)", "tpo_alpha": "[0, inf)", "ref_sync_every": "[0, inf)", "curriculum_stage": "[0, inf)", "tgdpo_alpha": "[0, inf)", "brain_beta": "(0, inf)", "sppo_eta": "(0, inf)",
    "nash_eta": "(0, inf)", "nash_tau": "(-inf, inf)", "mnpo_ratio": "[0, 1]", "apo_alpha": "[0, inf)",
    "ofs_alpha": "[0, inf)", "ofs_lr_ratio": "[1, inf)", "ref_sync_alpha": "(0, 1]", "lora_r": "[0, inf)", "lora_alpha": "(0, inf)", "lora_dropout": "[0, 1)",
}
# Values a string option may take.
CHOICES = {"split": ("all", "deterministic", "nondeterministic"), "score": ("unlikelihood", "likelihood", "odds"),
           "aggregate": ("batch_min", "example_min", "mean"),
           "student_reward": ("implicit-sum", "implicit-mean", "head"), "fdpo_divergence": FDPO_DIVERGENCES,
           "base_dtype": ("auto", "fp32", "bf16"), "packing": packing.MODES}


@dataclass
class Config:
    # --- what to train ---------------------------------------------------------------------------------------
    method: str = "drdo"           # a name in losses.LOSSES (README, "The methods"), or a weighted sum a+b (--loss_weights):
    model: str = "embedded"        # embedded (the task's pi_ref), tiny, opt-125m, opt-350m, opt-1.3b, smollm2-135m, hub id, path
    data: str = "embedded"         # embedded, embedded-tiny, ultrafeedback, tldr, hh, a .jsonl/.json/.parquet/.csv, a hub id
    data_config: str = ""          # hub dataset's configuration (hh: its subset, e.g. helpful-base); empty = the source's default
    data_split: str = ""           # hub dataset's training split, optionally ",<held-out split>" (e.g. train_prefs,test_prefs)
    ref_model: str = ""            # pi_ref; empty = the starting policy (--model), which is the SFT model on the embedded task
    oracle_model: str = ""         # Oracle backbone; empty = --model
    oracle_dir: str = ""           # use this trained Oracle (oracle.py --out DIR), frozen, instead of training one on the data
    # --- data condition --------------------------------------------------------------------------------------
    split: str = "all"             # all | deterministic | nondeterministic (top / bottom tercile of |gold margin|)
    flip: float = 0.0              # share of training pairs whose labels are swapped (label noise; 0, 0.2, 0.4)
    max_pairs: int = 0             # use at most this many training pairs (0 = all)
    max_length: int = 128          # prompt + response tokens (512-1024 for real data)
    max_prompt_length: int = 64    # prompt tokens kept (its end) when a pair is too long
    # --- loss hyper-parameters (each method reads the ones it needs) -----------------------------------------
    beta: float = 0.1              # KL strength of the DPO family (0.01-0.5)
    label_smoothing: float = 0.1   # cdpo / rdpo: assumed label-flip rate (0-0.5)
    kl_coef: float = 0.1           # edpo / pdpo: weight of the forward-KL term (0-1)
    aggregate: str = "batch_min"   # edpo: batch_min | example_min | mean over ensemble members
    ensemble: int = 0              # Oracle members; 0 = 3 for edpo, 1 otherwise
    simpo_beta: float = 2.0        # simpo: reward scale (2-10)
    simpo_gamma: float = 1.0       # simpo: target margin (0.5-1.5)
    orpo_beta: float = 0.1         # orpo: weight of the odds-ratio term (0.1-1)
    alpha: float = 1.0             # drdo: weight of the focal preference term (0 = distillation only; 0.1-1)
    gamma: float = 2.0             # drdo: focal exponent (0 = plain log-loss; 1-5)
    score: str = "unlikelihood"    # drdo: inner score z: unlikelihood | likelihood | odds (README deviation 5)
    student_reward: str = "implicit-sum"  # drdo: implicit-sum (beta_r * S) | implicit-mean (beta_r * Sbar) | head
    beta_r: float = 0.02           # drdo: scale of the implicit student reward r = beta_r * log pi(y|x) (0.005-0.05)
    distill_weight: float = 1.0    # drdo: weight of the reward-distillation term (0 = preference term only)
    exo_epsilon: float = 1e-3      # exo: label smoothing of the pair's target distribution (1e-4 - 1e-2)
    discopop_tau: float = 0.05     # discopop: temperature of the modulation sigmoid(beta h / tau) (paper 0.05; <= 1)
    fdpo_divergence: str = "reverse_kl"  # fdpo: reverse_kl (= dpo) | forward_kl | js_divergence | alpha_divergence
    fdpo_alpha: float = 0.5        # fdpo: alpha of alpha_divergence, in (0, 1) (-> 0 reverse KL, -> 1 forward KL)
    cpo_alpha: float = 1.0         # cpo: weight of the NLL of y_w, summed log-probs (paper 1; 0.1-1)
    kto_desirable_weight: float = 1.0    # kto: lambda_D, weight of the chosen (desirable) term (1-1.33)
    kto_undesirable_weight: float = 1.0  # kto: lambda_U, weight of the rejected (undesirable) term (1)
    ld_alpha: float = 0.5          # ld_dpo: weight of the log-probs past the pair's shared length (1 = dpo; 0-1)
    aot_label_smoothing: float = 0.0  # aot, aot_unpaired: label smoothing of the sorted logistic loss (TRL's)
    madpo_c_min: float = 0.5       # madpo: margin coefficient for clear pairs (< 1 damps them)
    madpo_c_max: float = 2.0       # madpo: margin coefficient for near-ties (> 1 amplifies them)
    adpo_temperature: float = 1.0  # adpo: soft target q = sigmoid(Oracle margin / T)
    asft_lambda: float = 0.1       # asft: weight of the absolute-likelihood terms (0.1-1)
    tpo_beta: float = 0.01         # tpo: beta of its reference-free preference term on summed log-probs (paper 0.01)
    tpo_alpha: float = 1.0         # tpo, tpo_l: weight of the gold response's NLL (paper 1 on base models, 0.05 on instruct)
    modpo_w0: float = 0.9          # modpo: weight of the labels' objective; brevity gets 1 - w0 (1 = dpo)
    ref_sync_every: int = 0        # TR-DPO: every N steps pi_ref <- a * pi + (1 - a) * pi_ref (a live reference; 0 = fixed, cached)
    ref_sync_alpha: float = 0.6    # TR-DPO: the mixing weight a of --ref_sync_every (1 = hard update; TRL's default 0.6)
    guidance_model: str = ""       # tgdpo: the token-level guidance model pi_r (a run directory, checkpoint, path or hub id)
    brain_beta: float = 1.0        # brain: temperature of the target weights softmax(Oracle reward / beta)
    tgdpo_alpha: float = 0.5       # tgdpo: strength of the token weights 1 +- alpha beta g_t (paper 0.5)
    sppo_eta: float = 1000.0       # sppo: eta, the step of its multiplicative weights; targets eta (P_hat - 1/2) (paper 1e3)
    nash_eta: float = 0.005        # inpo, mnpo: eta; the pair's target log-ratio gap is 1 / (2 eta) (paper 0.005 / 0.0075)
    nash_tau: float = -1.0         # inpo: tau, the pull towards pi_ref against pi_t (negative = eta / 3, the paper's)
    mnpo_ratio: float = 1 / 3      # mnpo: the share of pi_ref in the opponents' mixture (the code's ratio; = tau / eta)
    apo_alpha: float = 0.3         # apo_accel: Nesterov extrapolation of the reference, (1 + a) S_t - a S_{t-1}
    ofs_alpha: float = 0.5         # ofs_dpo: weight of the fast-slow chase term (LoRA only: two modules on one base)
    ofs_lr_ratio: float = 4.0      # ofs_dpo: the fast module's learning rate over the slow one's (slow lr = lr / ratio)
    anchor_models: str = ""        # inpo, mnpo, apo_accel: frozen models whose log-probs the loss reads besides --ref_model,
                                   # comma-separated, newest first (online.py sets them: pi_t, the past iterates)
    curriculum_stage: int = 0      # Curry-DPO stage k: the best vs the k-th worst of each prompt's K samples (curriculum.py; 0 = off)
    loss_weights: str = ""         # --method a+b: one weight per loss, comma-separated (e.g. 1,0.2; empty = all 1)
    wpo: bool = False              # WPO: weight each pair's loss by its detached on-policy weight (DPO family, simpo)
    oracle_alpha: float = 0.1      # Oracle: weight of NLL(y_w) in its loss (Eq. 6; 0.01-0.1)
    oracle_epochs: int = 3         # Oracle: passes over the training pairs
    oracle_lr: float = 5e-4        # Oracle: AdamW learning rate (~1e-5 for 100M+ backbones)
    oracle_pairs: str = "best-worst"  # Oracle's training pairs: best-worst (the policy's) | all (embedded: every pair of its K samples)
    # --- optimisation ----------------------------------------------------------------------------------------
    lr: float = 0.0                # AdamW learning rate; 0 = 1e-4 for embedded/tiny models, 1e-6 for pretrained ones
    batch_size: int = 8            # pairs per optimizer step
    micro_batch_size: int = 8      # pairs per forward pass; batch_size / micro_batch_size = accumulation steps
    epochs: float = 2.0            # passes over the training pairs (DPO collapses past ~3 on the embedded task)
    warmup: float = 0.1            # share of steps with linear warmup, then cosine decay to 0
    weight_decay: float = 0.0      # AdamW weight decay
    max_grad_norm: float = 1.0     # gradient clipping (0 = off)
    bf16: bool = False             # bf16 autocast; always on with CUDA, opt-in on CPU (50x slower on AVX2 CPUs)
    # --- memory: what fits one consumer GPU (README, "Training a 1B-7B model on one 24 GB GPU") --------------
    lora_r: int = 0                # LoRA rank (8-64); 0 = full fine-tuning. Only adapters (and drdo's head) train;
                                   # the DPO family's pi_ref is the same model with its adapters switched off
    lora_alpha: float = 16.0       # LoRA: the adapters' update is scaled by lora_alpha / lora_r
    lora_dropout: float = 0.0      # LoRA: dropout on the adapters' input (0 keeps the policy = pi_ref at step 1)
    lora_target_modules: str = "all-linear"  # LoRA: comma-separated module names, or all-linear (all but the LM head)
    save_merged: bool = False      # LoRA: at the end, also save the adapters merged into the base model (<out>/merged)
    packing: str = "off"           # off | prefix (a pair's prompt computed once) | rows (no padding: several pairs per row) | both
                                   # (packing.py): the same log-probs, fewer tokens; sdpa/eager attention only
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward: less memory, 1.2-1.5x the step time
    base_dtype: str = "auto"       # dtype of frozen LoRA base weights: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    # --- several processes (torchrun; README "Several GPUs and several machines") -----------------------------
    fsdp: bool = False             # under torchrun: shard weights, gradients and AdamW state over the processes
                                   # (FSDP2) instead of replicating the model on each (DDP, the default)
    seed: int = 0                  # data order, initialisation of new heads, label flips
    # --- outputs ---------------------------------------------------------------------------------------------
    out: str = ""                  # run directory; empty = runs/<method>-<model>-<data>-<split>-flip<p>-s<seed>
    eval_every: int = 50           # evaluate on held-out pairs every N steps (0 = only at the end)
    report_to: str = ""            # also send the logged rows to: tensorboard, wandb (comma-separated; pip install it)
    save_every: int = 50           # checkpoint every N steps (always at the end)
    resume: bool = False           # continue from the latest complete checkpoint in --out (an error if there is none)
    resume_from: str = ""          # continue from this checkpoint directory instead (e.g. an older one)
    save_total_limit: int = 2      # keep the newest K checkpoints (<out>/checkpoint-<step>); older ones are deleted
    final_check: bool = True       # embedded task: sample held-out prompts and compare with pi_ref by gold reward
    stop_after: int = 0            # testing aid: stop (as if killed) after this many steps, without a final save


# --help lists every method of the registry (each is also in the README's method table)
Config.HELP_EXTRA = {"method": " ".join(LOSSES)}


def resolve(cfg, limits=LIMITS):
    """Fill the defaults that depend on other fields, and reject impossible combinations with one clear error.
    `limits`: the range table (a command that adds options to Config passes its own, extended one)."""
    info = loss_entry(cfg.method)                          # a registry name, or a combination a+b
    if "+" in cfg.method:
        parse_loss_weights(cfg.loss_weights, len(cfg.method.split("+")))
    elif cfg.loss_weights:
        raise ValueError(f"--loss_weights weighs the losses of a combination (--method a+b); {cfg.method} is one loss")
    check_ranges(cfg, limits)
    world = int(os.environ.get("WORLD_SIZE", "1"))         # torchrun's number of processes (1 without torchrun)
    if world == 1 and cfg.batch_size % cfg.micro_batch_size:
        raise ValueError(f"--batch_size {cfg.batch_size} must be a positive multiple of --micro_batch_size "
                         f"{cfg.micro_batch_size} (accumulation steps = batch_size / micro_batch_size)")
    if cfg.batch_size % (world * cfg.micro_batch_size):
        raise ValueError(f"--batch_size {cfg.batch_size} must be a positive multiple of --micro_batch_size "
                         f"{cfg.micro_batch_size} x {world} processes = {world * cfg.micro_batch_size}: each process "
                         f"takes whole micro-batches of every optimizer step (accumulation steps per process = "
                         f"batch_size / (processes x micro_batch_size))")
    if cfg.fsdp and world == 1:
        raise ValueError("--fsdp shards the model over several processes; launch with torchrun, e.g. "
                         "torchrun --standalone --nproc_per_node 2 train.py --fsdp ...")
    if cfg.fsdp and cfg.lora_r:
        raise ValueError("--fsdp with --lora_r is not supported; LoRA keeps a 7B model on one 24 GB GPU, so run "
                         "LoRA data-parallel under torchrun without --fsdp")
    if cfg.max_prompt_length > cfg.max_length - 2:
        raise ValueError(f"--max_prompt_length {cfg.max_prompt_length} leaves no room for a response in "
                         f"--max_length {cfg.max_length}; use max_prompt_length <= max_length - 2")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}")
    if (cfg.save_merged or cfg.lora_dropout) and not cfg.lora_r:
        raise ValueError("--save_merged and --lora_dropout apply to LoRA training; add --lora_r (e.g. 16)")
    check_report_to(cfg.report_to)
    if cfg.wpo and not info.wpo:
        raise ValueError(f"--wpo weights pairwise preference losses; {cfg.method} is not one. Use one of: "
                         f"{' '.join(n for n, i in LOSSES.items() if i.wpo)}")
    if cfg.ref_sync_every:
        why = ("it reads no reference model" if not info.needs_reference else
               "with LoRA pi_ref is the policy with its adapters off, which cannot drift towards the policy; "
               "train without --lora_r" if cfg.lora_r else
               "syncing a reference sharded by FSDP or replicated by torchrun is not implemented; run one process"
               if world > 1 or cfg.fsdp else "")
        if why:
            raise ValueError(f"--ref_sync_every (TR-DPO) cannot be used with --method {cfg.method} here: {why}")
    if info.needs_guidance and not cfg.guidance_model:
        raise ValueError(f"--method {cfg.method} needs --guidance_model: a policy whose token log-ratios to pi_ref "
                         "guide the loss, e.g. the run directory of `python train.py --method dpo`")
    if info.needs_guidance and cfg.ref_sync_every:
        raise ValueError("--ref_sync_every moves pi_ref, while tgdpo's guidance g = log pi_r - log pi_ref is computed "
                         "once against the fixed pi_ref; use one or the other")
    if info.needs_anchors and not cfg.anchor_models:
        raise ValueError(f"--method {cfg.method} reads the log-probs of the previous iterate(s) besides pi_ref; give "
                         "--anchor_models (comma-separated), or run it round by round with online.py, which sets them")
    if info.needs_slow_module and (not cfg.lora_r or world > 1 or cfg.ref_sync_every or cfg.ref_model):
        raise ValueError(f"--method {cfg.method} trains two LoRA modules on one frozen base (OFS-DPO) against the base "
                         "itself as pi_ref: give --lora_r (e.g. 8), in one process, without --ref_sync_every or "
                         "--ref_model")
    if cfg.anchor_models and not info.needs_anchors:
        raise ValueError(f"--anchor_models gives the previous iterates' log-probs; --method {cfg.method} reads none")
    if cfg.oracle_dir and not info.needs_oracle:
        raise ValueError(f"--oracle_dir gives Oracle rewards; --method {cfg.method} reads none")
    if cfg.oracle_pairs not in ("best-worst", "all"):
        raise ValueError(f"--oracle_pairs must be best-worst or all; got {cfg.oracle_pairs!r}")
    if cfg.oracle_pairs != "best-worst" and (not info.needs_oracle or cfg.oracle_dir):
        raise ValueError(f"--oracle_pairs chooses what a trained Oracle learns from; --method {cfg.method} "
                         + ("reads no Oracle" if not info.needs_oracle else "is given a trained one by --oracle_dir"))
    if cfg.resume_from and not os.path.isdir(cfg.resume_from):
        raise ValueError(f"--resume_from {cfg.resume_from}: no such directory")
    small = cfg.model in ("embedded", "tiny")
    lr = cfg.lr or (1e-4 if small else 1e-6)
    ensemble = cfg.ensemble or (3 if cfg.method == "edpo" else 1)
    out = cfg.out or os.path.join("runs", f"{cfg.method}-{os.path.basename(cfg.model.rstrip('/'))}-"
                                          f"{os.path.basename(cfg.data)}-{cfg.split}-flip{cfg.flip:g}-s{cfg.seed}")
    return replace(cfg, lr=lr, ensemble=ensemble, out=out)


def resume_command(cfg, launcher="python"):
    """The command line that continues this run: every option that differs from its default, plus --resume.
    `launcher`: python, or the torchrun prefix of a run with several processes (distributed.Dist.launcher)."""
    default = Config()
    args = []
    for name, value in asdict(cfg).items():
        if name in ("resume", "resume_from", "stop_after") or value == getattr(default, name):
            continue
        args += [f"--{name}" if value is True else f"--no-{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return f"{launcher} train.py " + " ".join(args) + " --resume"
