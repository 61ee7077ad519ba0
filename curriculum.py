"""Curry-DPO (Pattnaik et al., arXiv 2403.07230): curriculum learning over K ranked responses per prompt.

From K responses per prompt ranked by score, R_1 > R_2 > ... > R_K, the method builds K - 1 sets of pairs that all
prefer the best response, (R_1, R_K), (R_1, R_{K-1}), ..., (R_1, R_2), and orders them from the largest score gap
(easy) to the smallest (hard). Stage k trains the loss on the k-th set, starting from the policy that stage k - 1
ended with, which is also stage k's reference model: the reference is refreshed at every stage.

Here one stage is one ordinary train.py run (`--curriculum_stage k`, which makes data.load_splits give the stage's
pairs, data.ranked_pairs), with `--model` and `--ref_model` both set to the previous stage's final checkpoint; so
every stage starts at pi = pi_ref (DPO's loss ln 2 at its first step), and pi_ref's cached log-probs are keyed on
that checkpoint's weights. The embedded task keeps its K = 4 samples per prompt for this. Each stage writes its own
run directory (<out>/stage-<k>); a stage whose summary.json exists is done and is skipped, so a stopped curriculum
continues where it was (inside a stage, `--resume` continues the stage). Only the last stage ends with the
held-out gold check against the task's pi_ref.

    python curriculum.py --method dpo                 # 3 stages on the embedded task, each 2 epochs of its pairs
    python curriculum.py --method dpo --epochs 1 --beta 0.05

NOTE (deviates from paper): the paper's epochs, beta and learning rate per stage were not recovered; every stage
here uses the run's options. Its pairs come from UltraFeedback's 4 ratings; ours from the embedded task's gold
reward of pi_ref's 4 samples. Prompts whose pair ties at a stage are left out of that stage.
"""
import json
import os
import sys
from dataclasses import asdict, replace

from common import parse_config, quiet_transformers
from config import Config, resolve
from embedded import EMBEDDED_PRESETS


def stages(cfg):
    """The stage numbers 1..K-1 of the run's data (K: the embedded task's samples per prompt)."""
    if cfg.data not in EMBEDDED_PRESETS:
        raise ValueError(f"curriculum.py needs K ranked responses per prompt, which only the embedded task keeps "
                         f"here (--data embedded or embedded-tiny); got --data {cfg.data}")
    return list(range(1, EMBEDDED_PRESETS[cfg.data].samples_per_prompt))


def run_curriculum(cfg, log=print):
    """Every stage in turn -> the list of the stages' summaries. cfg: a resolved train.Config."""
    import train
    if cfg.lora_r:
        raise ValueError("curriculum.py hands each stage's full checkpoint to the next as --model and --ref_model; "
                         "train without --lora_r")
    summaries, previous = [], None
    plan = stages(cfg)
    for k in plan:
        stage = replace(cfg, curriculum_stage=k, out=os.path.join(cfg.out, f"stage-{k}"),
                        model=previous or cfg.model, ref_model=previous or cfg.ref_model,
                        oracle_model=cfg.oracle_model or cfg.model,          # one Oracle for every stage
                        final_check=cfg.final_check and k == plan[-1])
        done = os.path.join(stage.out, "summary.json")
        if os.path.exists(done):
            with open(done) as f:
                summary = json.load(f)
            log(f"curriculum: stage {k} of {len(plan)} already done ({stage.out})")
        else:
            log(f"curriculum: stage {k} of {len(plan)}: each prompt's best sample against its rank-{len(plan) + 2 - k} "
                f"sample (of {len(plan) + 1}), from {previous or cfg.model}, which is also this stage's reference")
            summary = train.train(stage, log)
            if "stopped_at" in summary:                  # --stop_after: as if killed, later stages not run
                return summaries + [summary]
        summaries.append(summary)
        previous = summary["checkpoint"]
    return summaries


def main(argv=None):
    cfg = parse_config(Config, argv, description=__doc__.split("\n\n")[0])
    try:
        cfg = resolve(cfg)                  # once, on the first stage: lr's default follows --model, not a path
        quiet_transformers()
        print(json.dumps(asdict(cfg), indent=1))
        return run_curriculum(cfg)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, MemoryError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
