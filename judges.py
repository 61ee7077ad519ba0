"""Judges for evaluate.py: who scores a sampled completion. One interface, three kinds.

    gold        the embedded task's gold reward r*(y) (VADER sentiment of the completion alone): trained on
                nothing, so independent of every method
    oracle      a DRDO Oracle (oracle.py: a causal LM with a reward head): the DRDO paper's UltraFeedback
                protocol judges win rates with its own Oracle. CIRCULAR for DRDO, distill and e-DPO, which were
                trained to match this Oracle's reward gaps (their win rates under it are not independent evidence)
    classifier  any reward model that loads with AutoModelForSequenceClassification (a local directory or a hub
                id; one output, the reward): an independent judge when it was trained on other data. Our own
                Oracles load this way too (<member>/seqcls, oracle.save_seqcls), and then score like `oracle`

A judge maps P prompts x n completions to a (P, n) table of rewards: `judge.rewards(prompts, texts, pairs)`
with `texts` the decoded completions (P lists of n strings) and `pairs` the exact sampled token ids, flattened
((prompt_ids, completion_ids) for each of the P * n samples, in the policies' tokenizer).
What a reward model sees: when its tokenizer is the policies' tokenizer, the sampled ids themselves (exactly
what was generated, with the end-of-turn token when the sample stopped); otherwise the prompt and the decoded
completion re-tokenized by tokenization.py's rules in ITS tokenizer (one BOS, its chat template or fallback,
closed by its end-of-turn/EOS), or, for an encoder without EOS (BERT-like), as a (prompt, completion) text pair.
NOTE: a re-tokenized completion that was cut at max_new_tokens gets a closing token it never sampled.
"""
import os

import torch

import tokenization
from common import go_offline, hub_reachable
from embedded import gold_reward
from models import HEAD_FILE, forward_with_reward, load_reward_model

CIRCULAR = ("drdo", "distill", "edpo")       # methods trained against an Oracle's rewards
ORACLE_NOTE = ("the Oracle judge is CIRCULAR for DRDO (and distill / e-DPO): those policies were trained to "
               "match this Oracle's reward gaps, so their win rates under it are not independent evidence. For an "
               "independent judge use --judge <a directory or hub id of an AutoModelForSequenceClassification "
               "reward model> (or the embedded task's gold reward).")


class GoldJudge:
    """The embedded task's gold reward: VADER sentiment of the completion text alone."""
    name, kind, circular = "gold", "gold", False
    note = "gold = VADER sentiment of the completion, which nothing was trained on"

    def rewards(self, prompts, texts, pairs):
        return [gold_reward(comps) for comps in texts]


class RewardModelJudge:
    """A reward model: our Oracle (a causal LM + reward head, `kind="oracle"`) or a sequence classifier
    (`kind="classifier"`). `policy_tokenizer`: the tokenizer the completions were sampled with."""

    def __init__(self, model, tokenizer, policy_tokenizer, kind, name, batch_size=32):
        self.model, self.tokenizer, self.kind, self.name = model.eval(), tokenizer, kind, name
        self.batch_size = batch_size
        self.same_tokenizer = tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        # an Oracle's own seq-cls export (<member>/seqcls beside reward_head.pt) is the Oracle, hence circular too
        self.circular = kind == "oracle" or os.path.isfile(os.path.join(os.path.dirname(os.path.normpath(name)),
                                                                        HEAD_FILE))
        self.note = ORACLE_NOTE if self.circular else (
            f"reward model {name} (AutoModelForSequenceClassification); independent of the policies when it was "
            "not trained on their data")

    def inputs(self, prompt, text, pair):
        """The ids this judge reads for one sample (see the module docstring)."""
        if self.same_tokenizer:
            return pair[0] + pair[1]
        tok = self.tokenizer
        if tok.eos_token_id is None:                         # an encoder: a (prompt, completion) text pair
            return tok(tokenization.render_prompt(tok, prompt), text, truncation=True)["input_ids"]
        response = text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]
        body, closer = tokenization.encode_response(tok, prompt, response)
        return tokenization.encode_prompt(tok, prompt) + body + [closer]

    @torch.no_grad()
    def score(self, rows):
        """Rewards of id rows -> (N,) float64, in right-padded batches. A classifier reads its score at the last
        token that is not config.pad_token_id, so a row that ENDS with that id (a sample cut right after it) is
        scored alone, unpadded, with the pad id unset (then HF reads the last position); so is every row of a
        classifier without a pad id."""
        pad = self.model.config.pad_token_id
        alone = [pad is None or (self.kind == "classifier" and r[-1] == pad) for r in rows]
        out = torch.zeros(len(rows), dtype=torch.float64)                                       # (N,)
        batched = [i for i, a in enumerate(alone) if not a]
        for i in range(0, len(batched), self.batch_size):
            idx = batched[i:i + self.batch_size]
            T = max(len(rows[k]) for k in idx)
            ids = torch.tensor([rows[k] + [pad] * (T - len(rows[k])) for k in idx])              # (b, T)
            mask = torch.tensor([[1] * len(rows[k]) + [0] * (T - len(rows[k])) for k in idx])   # (b, T)
            out[idx] = self.forward(ids, mask)
        self.model.config.pad_token_id = None
        try:
            for k in (k for k, a in enumerate(alone) if a):
                out[k] = self.forward(torch.tensor([rows[k]]), torch.ones(1, len(rows[k]), dtype=torch.long))[0]
        finally:
            self.model.config.pad_token_id = pad
        return out

    def forward(self, ids, mask):
        """(b, T) ids and attention mask -> (b,) float64 rewards on the CPU."""
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        if self.kind == "oracle":
            return forward_with_reward(self.model, ids, mask)[1].double().cpu()
        return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].double().cpu()

    def rewards(self, prompts, texts, pairs):
        n = len(texts[0])
        rows = [self.inputs(prompts[k // n], texts[k // n][k % n], pair) for k, pair in enumerate(pairs)]
        return self.score(rows).view(len(prompts), n).tolist()


def load_judge(spec, policy_tokenizer, task=None, oracle_dir=None, log=print):
    """--judge -> a judge. spec: "gold" (needs the embedded task), "oracle" (the Oracle in `oracle_dir`), or a
    directory / hub id of an AutoModelForSequenceClassification reward model."""
    from transformers import AutoTokenizer

    if spec == "gold":
        if task is None:
            raise ValueError("--judge gold needs a gold reward, which only the embedded task has; use --judge oracle "
                             "or --judge <a reward model directory or hub id>")
        return GoldJudge()
    if spec == "oracle":
        return RewardModelJudge(load_reward_model(oracle_dir), AutoTokenizer.from_pretrained(oracle_dir),
                                policy_tokenizer, "oracle", oracle_dir)
    from transformers import AutoModelForSequenceClassification

    if not os.path.isdir(spec) and not hub_reachable():
        go_offline()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except OSError as e:
        raise ValueError(f"--judge {spec}: not 'gold', 'oracle', or a reward model that loads with "
                         f"AutoModelForSequenceClassification ({str(e).splitlines()[0]}). Without internet, give a "
                         "local directory (an Oracle's <member>/seqcls loads this way)") from None
    if model.config.num_labels != 1:
        raise ValueError(f"--judge {spec}: a reward model has one output (num_labels 1); this one has "
                         f"{model.config.num_labels}")
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    log(f"judge: {spec} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return RewardModelJudge(model, tokenizer, policy_tokenizer, "classifier", spec)
