"""Packing: a prompt computed once for all its responses, and several sequences in one row without padding.

    python train.py --method dpo --packing both        # shared prefixes + padding-free rows (or: prefix, rows)
    python bench.py --shape tldr --packing both        # what it buys on real-shaped batches (README, "Speed")

A collated batch (tokenization.collate) has N right-padded rows: a pair's two rows repeat its prompt, and every
row is padded to the batch's longest. For a causal LM both costs can be removed exactly:

  shared prefix   row n reuses the first L_n tokens of an earlier row m when they are the same tokens (a pair's
                  prompt, and more when both responses start alike). In a causal LM the hidden states of those
                  positions depend on those tokens only, so they are computed once: the rest of row n becomes a
                  segment that attends to m's first L_n positions and to itself, never to m's continuation,
                  with position ids L_n, L_n + 1, ... as if it followed them directly. A TL;DR-shaped pair
                  (prompt P = 4 x response R) costs P + 2R tokens instead of 2(P + R): 1.67x fewer.
  padding-free    the segments of several rows go into one packed row, each attending only to its own rows;
                  a batch costs its real tokens, not its row count x its longest row.

One picture covers both. Every token of the collated batch, (row n, position t), lives at one place where[n, t]
of the packed batch (two rows share a place where they share a prefix), and (n, t) may attend to (n, t') for
t' <= t, and to nothing else: the packed attention mask is exactly that relation, the position id at where[n, t]
is t. The logits that predict row n's token t + 1 are read at where[n, t]; the reward head reads
where[n, last]. So every output equals the unpacked forward's up to float rounding (1e-6 in fp32; tested for OPT
and Llama with sdpa and eager attention, logits, rewards and gradients), and every function that reads the
logits (losses.sequence_logps and its relatives) runs unchanged on them.

Flash attention takes no mask: there the batch becomes one row of all its sequences, told apart by position ids
that restart at 0 (transformers' varlen path, as its DataCollatorWithFlattening uses); --packing rows and both
then mean padding-free rows only, since varlen cannot express a shared prefix. NOTE: this path is checked on the
CPU through sdpa, where transformers reads the same position ids as separate sequences (Llama; tested), not on
a GPU with flash-attn installed (none in this project's sessions).

When it does not apply (models.forward then runs the plain, padded batch):
  * --packing prefix under flash attention (varlen has no shared prefix), and attention implementations other
    than sdpa, eager and flash attention (e.g. flex attention);
  * left-padded rows (the sampler's; collated training batches are right-padded);
  * bidirectional encoders (judges.py's sequence classifiers): a prompt token there sees the response after it,
    so neither its states nor a pair's can be shared. They are never packed.
On a GPU, sdpa with an explicit mask cannot use the flash kernel (it uses the memory-efficient one): packing
trades that kernel for fewer tokens. Measure with bench.py before switching it on for long sequences.
"""
from dataclasses import dataclass

import torch

MODES = ("off", "prefix", "rows", "both")
MASKED_ATTENTION = ("sdpa", "eager")            # attention implementations that take a 4D mask


@dataclass
class Plan:
    """Where every token of an (N, T) right-padded batch sits in the packed (R, L) batch."""
    input_ids: torch.Tensor      # (R, L) packed tokens
    position_ids: torch.Tensor   # (R, L) each token's position in its original row
    allowed: torch.Tensor        # (R, L, L) bool: query position i may attend to key position j (None: one_row)
    where: torch.Tensor          # (N, T) flat index (into R * L) of every real token; padding points at the row's last
    lengths: torch.Tensor        # (N,) real tokens per original row

    def mask(self, kind, dtype):
        """The (R, 1, L, L) mask attention adds: bool (True = attend) for sdpa; 0 / dtype's min for eager, which
        adds the mask to the attention scores."""
        m = self.allowed.unsqueeze(1)
        if kind == "sdpa":
            return m
        return torch.zeros(m.shape, dtype=dtype).masked_fill(~m, torch.finfo(dtype).min)


def right_padded(attention_mask):
    """True when every row's real tokens come first: mask = 1 on positions 0 .. len - 1, 0 after."""
    lengths = attention_mask.sum(1, keepdim=True)                                    # (N, 1)
    return bool((attention_mask.bool() == (torch.arange(attention_mask.shape[1]) < lengths)).all())


def shared_prefixes(input_ids, lengths):
    """-> parent (N,) and shared (N,): row n reuses the first shared[n] tokens of the earlier row parent[n], the
    earlier row with which it has the longest common prefix (-1 and 0 when it shares nothing)."""
    N, T = input_ids.shape
    real = torch.arange(T) < lengths[:, None]                                         # (N, T)
    same = (input_ids[:, None, :] == input_ids[None, :, :]) & real[:, None] & real[None, :]   # (N, N, T)
    lcp = same.long().cumprod(-1).sum(-1)                                             # (N, N) common prefix
    lcp = lcp.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(-1), 0)           # earlier rows only
    shared, parent = lcp.max(1)                                                       # (N,) first best on ties
    return torch.where(shared > 0, parent, -1), shared


def plan(input_ids, attention_mask, prefix=True, rows=True, pad_id=0, one_row=False):
    """Pack a right-padded (N, T) batch. `prefix`: share common prefixes between rows; `rows`: put several
    families (a row and the rows that share its prefix) in one packed row, first-fit by decreasing size into
    rows as long as the largest family. Neither: every row alone, as collated (a plan that changes nothing).
    `one_row`: every family in a single row and no mask built (flash attention's varlen path, which tells the
    sequences apart by their position ids restarting at 0)."""
    input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()
    N, T = input_ids.shape
    lengths = attention_mask.sum(1)                                                   # (N,)
    if prefix:
        parent, shared = shared_prefixes(input_ids, lengths)
    else:
        parent, shared = torch.full((N,), -1), torch.zeros(N, dtype=torch.long)
    own = (lengths - shared).tolist()                                                 # tokens of its own segment
    parent, shared = parent.tolist(), shared.tolist()
    root = list(range(N))
    for n in range(N):                                                                # parents come first
        if parent[n] >= 0:
            root[n] = root[parent[n]]
    families = {}                                                                     # root -> its rows, in order
    for n in range(N):
        families.setdefault(root[n], []).append(n)
    size = {r: sum(own[n] for n in members) for r, members in families.items()}
    L = sum(size.values()) if one_row else max(size.values())
    bins, room = [], []                                                               # bins of families
    for r in (sorted(families, key=lambda r: (-size[r], r)) if rows else families):
        b = next((i for i, free in enumerate(room) if free >= size[r]), None) if rows else None
        if b is None:
            bins.append([]), room.append(L)
            b = len(bins) - 1
        bins[b].append(r)
        room[b] -= size[r]
    R = len(bins)
    where = torch.zeros(N, T, dtype=torch.long)                                       # (N, T)
    packed = torch.full((R * L,), pad_id, dtype=torch.long)                           # (R L,)
    position_ids = torch.zeros(R * L, dtype=torch.long)                               # (R L,)
    allowed = None if one_row else torch.eye(L, dtype=torch.bool).repeat(R, 1, 1)     # (R, L, L) padding: itself
    for b, family_roots in enumerate(bins):
        offset = 0
        for r in family_roots:
            for n in families[r]:
                ln, s = int(lengths[n]), shared[n]
                if s:
                    where[n, :s] = where[parent[n], :s]                               # the parent's places
                where[n, s:ln] = b * L + offset + torch.arange(ln - s)                # its own segment
                where[n, ln:] = where[n, ln - 1]                                      # padding: never read
                offset += ln - s
                packed[where[n, s:ln]] = input_ids[n, s:ln]
                position_ids[where[n, :ln]] = torch.arange(ln)
                if allowed is not None:
                    local = where[n, :ln] - b * L                                     # (ln,) places in row b
                    allowed[b][local[:, None], local[None, :]] |= torch.ones(ln, ln, dtype=torch.bool).tril()
    return Plan(packed.view(R, L), position_ids.view(R, L), allowed, where, lengths)


def packed_forward(model, input_ids, attention_mask, keep, mode, attention, dtype, packs_logits,
                   output_hidden_states=False, pad_id=0):
    """model(...) on the packed batch -> (logits (M, V) at the positions `keep` (N, T) marks, in row-major order,
    as an unpacked forward with logits_to_keep=keep returns them; the last real token's final hidden state (N, d)
    when output_hidden_states, else None). `attention`: the model's attention implementation: sdpa or eager get
    the 4D mask; flash attention gets one row without a mask, its sequences told apart by position ids that
    restart at 0 (its varlen path; no shared prefix, which varlen cannot express)."""
    device = input_ids.device
    varlen = attention.startswith("flash")
    p = plan(input_ids, attention_mask, prefix=mode in ("prefix", "both") and not varlen,
             rows=mode in ("rows", "both") or varlen, pad_id=pad_id, one_row=varlen)
    R, L = p.input_ids.shape
    targets = p.where[keep.cpu()]                                                     # (M,) flat packed places
    kwargs = {}
    if packs_logits:                                                                  # the LM head at those only
        packed_keep = torch.zeros(R * L, dtype=torch.bool)
        packed_keep[targets] = True                                                   # (R L,) a place may serve 2
        kwargs["logits_to_keep"] = packed_keep.view(R, L).to(device)
        rank = packed_keep.long().cumsum(0) - 1                                       # place -> row of the logits
        targets = rank[targets]
    mask = None if varlen else p.mask(attention, dtype).to(device)
    out = model(input_ids=p.input_ids.to(device), attention_mask=mask, position_ids=p.position_ids.to(device),
                output_hidden_states=output_hidden_states, use_cache=False, **kwargs)   # no cache: else no varlen
    logits = out.logits if packs_logits else out.logits.reshape(R * L, -1)
    logits = logits[targets.to(device)]                                               # (M, V)
    last = None
    if output_hidden_states:
        hidden = out.hidden_states[-1].reshape(R * L, -1)                             # (R L, d)
        last = hidden[p.where[torch.arange(len(p.lengths)), p.lengths - 1].to(device)]   # (N, d)
    return logits, last
