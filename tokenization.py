"""Tokenization and collation: preference records (data.py's schema) -> token ids -> padded batches.

Formats `tokenize_pair` accepts (the standard and conversational preference formats of the Hugging Face
ecosystem; data.py turns the implicit-prompt format into one of them):
    standard        prompt, chosen, rejected are strings: used as they are, no template
    conversational  lists of chat messages {"role", "content"}: the prompt is rendered by the tokenizer's chat
                    template WITH its generation prompt, so the assistant header ("<|im_start|>assistant\n")
                    belongs to the prompt; a response is the text the template adds after that prompt when it
                    renders prompt + response, so its end-of-turn token belongs to the response
    fallback        a tokenizer without a chat template (GPT-2, OPT) renders messages with FALLBACK_TEMPLATE:
                        "User: {content}\n\nAssistant: {content}\n\nUser: {content}\n\nAssistant:"
                    (role capitalised, turns joined by a blank line; the prompt ends with "\n\nAssistant:",
                    a response is " {content}", then EOS)

Special tokens, whatever the format:
    BOS             exactly one at the start of the prompt when the model uses one: the tokenizer's own prefix
                    (what its post-processor adds, e.g. Llama's <|begin_of_text|>, OPT's </s>) is added once,
                    also when the chat template already wrote it (Llama-3) and never twice
    closing token   each response ends with exactly one: the template's end-of-turn token when the template
                    writes one after an assistant message (ChatML <|im_end|>, Llama-3 <|eot_id|>), else EOS.
                    Whitespace the template puts after it ("<|im_end|>\n") is not part of the response, and
                    closing tokens already at the end of a response (an "<eos>" in the text) are not repeated.
                    Sampling stops at EOS or the end-of-turn token (`stop_token_ids`)

Truncation (tokenize_pair): when prompt + longest response > max_length, the prompt keeps its LAST
max_prompt_length tokens (where the question is; its BOS is kept and counted), then each response keeps its
start and its closing token. Pairs whose response is empty, or whose chosen equals rejected, are dropped.

Shapes: B = pairs in a batch, T = padded sequence length, K = Oracle ensemble members, N = rows.
Run `pytest -q test_tokenization.py` to see every rule above on hand-written token ids.
"""
from collections import Counter

import torch

# NOTE (reconstructs): neither the DRDO paper nor TRL define a format for chat messages without a chat
# template (TRL raises an error); this plain "Role: content" layout is ours (README deviation 24).
FALLBACK_TEMPLATE = ("{% for m in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
                     "{{ m['role'] | capitalize }}: {{ m['content'] }}{% endfor %}"
                     "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}")


# ============================================================================================================
# Rendering messages to text
# ============================================================================================================
def chat(tokenizer, messages, generation_prompt):
    """Messages -> text, with the tokenizer's chat template or, when it has none, FALLBACK_TEMPLATE."""
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def render_prompt(tokenizer, prompt):
    """Text of a prompt: a string as it is; messages through the template, with the generation prompt."""
    return prompt if isinstance(prompt, str) else chat(tokenizer, prompt, generation_prompt=True)


def render_response(tokenizer, prompt, response):
    """Text of a response: a string as it is; messages as the part of the rendered (prompt + response) that
    comes after the rendered prompt (so the assistant header is the prompt's, the end-of-turn the response's).
    A string prompt with message responses is rendered as the user turn of a conversation."""
    if isinstance(response, str):
        return response
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    prefix = chat(tokenizer, messages, generation_prompt=True)
    full = chat(tokenizer, messages + list(response), generation_prompt=False)
    if not full.startswith(prefix):
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + response, so the "
                         "response cannot be cut out of it; pass prompt, chosen and rejected as plain strings")
    return full[len(prefix):]


# ============================================================================================================
# Special tokens: the tokenizer's BOS prefix, the end-of-turn token, what closes a response
# ============================================================================================================
def special_prefix(tokenizer):
    """The ids the tokenizer adds before any text (its BOS when it uses one; [] for GPT-2 / SmolLM2):
    found by encoding one character with and without special tokens."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i]
    return []


def special_tokens(tokenizer):
    """Every special token string of the tokenizer (named ones and added tokens marked special)."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    return set(tokenizer.all_special_tokens) | set(added)


def strip_closing(text, closers):
    """Remove the closing tokens (strings in `closers`) at the end of `text`, with any whitespace after them.
    -> (text before them, the first of them) or (text, None) when the text does not end with one."""
    first = None
    while True:
        stripped = text.rstrip()
        closer = next((c for c in sorted(closers, key=len, reverse=True) if c and stripped.endswith(c)), None)
        if closer is None:
            return text, first
        text, first = stripped[:-len(closer)], closer


def end_of_turn(tokenizer):
    """The special token the chat template writes after an assistant message (ChatML <|im_end|>, Llama-3
    <|eot_id|>), found by rendering a one-turn conversation; None without a template or without one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = render_response(tokenizer, [{"role": "user", "content": "x"}], [{"role": "assistant", "content": "y"}])
    except Exception:     # a template that rejects this minimal conversation has no end-of-turn we can find
        return None
    return strip_closing(text, special_tokens(tokenizer))[1]


def closing_tokens(tokenizer):
    """Token strings that may close a response: EOS and the template's end-of-turn token."""
    return {t for t in (tokenizer.eos_token, end_of_turn(tokenizer)) if t}


def stop_token_ids(tokenizer):
    """Ids at which sampling stops: EOS first, then the template's end-of-turn token when it differs."""
    eot = end_of_turn(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(eot) if eot else None
    return [tokenizer.eos_token_id] + ([eot_id] if eot_id is not None and eot_id != tokenizer.eos_token_id else [])


# ============================================================================================================
# Token ids of a prompt and of a response
# ============================================================================================================
def encode_prompt(tokenizer, prompt, prefix=None):
    """Prompt (string or messages) -> ids starting with exactly one copy of the tokenizer's special prefix
    (BOS), whether or not the template wrote it. `prefix`: special_prefix(tokenizer), when already known."""
    prefix = special_prefix(tokenizer) if prefix is None else prefix
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    n = len(prefix)
    if n:
        while ids[:2 * n] == prefix + prefix:         # the template wrote BOS and the text held another
            ids = ids[n:]
        if ids[:n] != prefix:
            ids = prefix + ids
    return ids


def encode_response(tokenizer, prompt, response, closers=None):
    """Response (string or messages) -> (ids without any closing token, the id that closes it): the
    template's end-of-turn token when the rendered response ends with it, else EOS."""
    closers = closing_tokens(tokenizer) if closers is None else closers
    text, closer = strip_closing(render_response(tokenizer, prompt, response), closers)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    closer_ids = {tokenizer.convert_tokens_to_ids(c) for c in closers}
    while ids and ids[-1] in closer_ids:            # a closing token the text spelled differently
        ids = ids[:-1]
    return ids, tokenizer.convert_tokens_to_ids(closer) if closer else tokenizer.eos_token_id


def tokenize_pair(tokenizer, record, max_length=512, max_prompt_length=256, special=None):
    """One record -> ({"prompt_ids", "chosen_ids", "rejected_ids"} lists of ints, None), or (None, reason).

    Steps: 1) the prompt with exactly one BOS (encode_prompt) and each response without special tokens
    (encode_response), separately, so the prompt/response boundary is exact; 2) each response closed by
    exactly one closing token (end-of-turn or EOS); 3) if prompt + longest response > max_length: the prompt
    keeps its BOS and its last tokens up to max_prompt_length, then each response is cut to the room left,
    keeping its start and its closing token; 4) the pair is dropped if a response has no token besides the
    closing one, or if chosen == rejected. A record with a `gold_response` (TPO's third response) gets its
    `gold_ids` the same way, and one with `responses` (BRAIn's K candidates) its `responses_ids`, each counted
    in step 3's longest response.
    NOTE: a response cut in step 3 still ends with its closing token, so "one per response" always holds; the
    model then learns an early stop on those rows. Raise max_length if many pairs are cut.
    `special`: (special_prefix, closing_tokens) of the tokenizer, when already computed (tokenize_dataset).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token before tokenizing")
    prefix, closers = special or (special_prefix(tokenizer), closing_tokens(tokenizer))
    prompt_ids = encode_prompt(tokenizer, record["prompt"], prefix)
    keys = ("chosen", "rejected") + (("gold_response",) if record.get("gold_response") is not None else ())
    encoded = [encode_response(tokenizer, record["prompt"], record[k], closers) for k in keys]
    (chosen, close_c), (rejected, close_r) = encoded[:2]
    gold, close_g = encoded[2] if len(encoded) > 2 else (None, None)
    group = [encode_response(tokenizer, record["prompt"], r, closers) for r in record.get("responses") or ()]
    if len(prompt_ids) + max(len(ids) for ids, _ in encoded + group) + 1 > max_length:
        if len(prompt_ids) > max_prompt_length:                            # keep BOS and the prompt's end
            keep = max_prompt_length - len(prefix)
            prompt_ids = (prefix + prompt_ids[len(prefix):][-keep:]) if keep > 0 else prompt_ids[-max_prompt_length:]
        room = max_length - len(prompt_ids) - 1                            # -1 for the closing token
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for a response after a prompt of "
                             f"{len(prompt_ids)} tokens; use max_prompt_length < max_length - 1")
        chosen, rejected, gold = chosen[:room], rejected[:room], gold and gold[:room]
        group = [(ids[:room], close) for ids, close in group]
    if not chosen or not rejected or gold is not None and not gold or any(not ids for ids, _ in group):
        return None, "empty response"
    if chosen + [close_c] == rejected + [close_r]:
        return None, "chosen equals rejected"
    out = {"prompt_ids": prompt_ids, "chosen_ids": chosen + [close_c], "rejected_ids": rejected + [close_r]}
    if gold is not None:                                                   # TPO's third response
        out["gold_ids"] = gold + [close_g]
    if group:                                                              # BRAIn's K candidates
        out["responses_ids"] = [ids + [close] for ids, close in group]
    return out, None


def tokenize_dataset(tokenizer, ds, max_length=512, max_prompt_length=256, log=print):
    """Tokenize every record -> (examples, dropped reasons). Each example keeps its scores and confidence, and
    `row`, its index in `ds`, so values computed per example (Oracle scores) stay aligned with the rows."""
    examples, dropped = [], Counter()
    special = (special_prefix(tokenizer), closing_tokens(tokenizer))              # once, not per pair
    for i, row in enumerate(ds):
        out, reason = tokenize_pair(tokenizer, row, max_length, max_prompt_length, special)
        if out is None:
            dropped[reason] += 1
            continue
        for key in ("chosen_score", "rejected_score", "confidence", "chosen_win_rate", "rejected_win_rate"):
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


def prompt_ids_for_sampling(tokenizer, prompts, max_prompt_length):
    """Prompts (strings or messages) -> their ids as tokenize_pair builds them (one BOS, generation prompt),
    each cut to its last max_prompt_length tokens with its BOS kept: what evaluate.py samples from."""
    prefix = special_prefix(tokenizer)
    out = []
    for p in prompts:
        ids = encode_prompt(tokenizer, p, prefix)
        if len(ids) > max_prompt_length:
            ids = prefix + ids[len(prefix):][-(max_prompt_length - len(prefix)):]
        out.append(ids)
    return out


# ============================================================================================================
# Collation
# ============================================================================================================
def collate(examples, pad_token_id):
    """B tokenized pairs -> one right-padded batch of 2B rows: rows 0..B-1 are prompt + chosen, rows
    B..2B-1 are prompt + rejected (one forward pass sees both, with identical padding and dropout).

    Returns input_ids (2B, T), attention_mask (2B, T), loss_mask (2B, T) = 1 on response tokens (closing
    token included) and 0 on prompt and padding; plus chosen_scores / rejected_scores of shape (K, B) when the
    examples carry scores (K = 1 for plain floats), confidence (B,) and chosen_win_rate / rejected_win_rate (B,)
    when present; gold_input_ids,
    gold_attention_mask, gold_loss_mask (B, T') when every example has a gold response (TPO).
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
    if all("responses_ids" in ex for ex in examples):              # BRAIn: K candidates, K*B rows, k-major
        K = len(examples[0]["responses_ids"])
        if any(len(ex["responses_ids"]) != K for ex in examples):
            raise ValueError("every record of a batch needs the same number of responses")
        group = collate_completions([(ex["prompt_ids"], ex["responses_ids"][k]) for k in range(K) for ex in examples],
                                    pad_token_id)
        batch.update({f"group_{k}": v for k, v in group.items()})
    if all("gold_ids" in ex for ex in examples):                   # TPO: the gold responses, B more rows
        gold = collate_completions([(ex["prompt_ids"], ex["gold_ids"]) for ex in examples], pad_token_id)
        batch.update({f"gold_{k}": v for k, v in gold.items()})
    if all("chosen_score" in ex for ex in examples):
        for key, out in (("chosen_score", "chosen_scores"), ("rejected_score", "rejected_scores")):
            scores = [ex[key] if isinstance(ex[key], (list, tuple)) else [ex[key]] for ex in examples]
            batch[out] = torch.tensor(scores, dtype=torch.float32).T.contiguous()   # (K, B)
    if all("confidence" in ex for ex in examples):
        batch["confidence"] = torch.tensor([float(ex["confidence"]) for ex in examples])   # (B,)
    for key in ("chosen_win_rate", "rejected_win_rate"):           # online.py's rounds: SPPO, DNO
        if all(key in ex for ex in examples):
            batch[key] = torch.tensor([float(ex[key]) for ex in examples])                   # (B,)
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
