"""What a training run logs, under which names, and where.

Every optimizer step appends one JSON line to <out>/metrics.jsonl: the mean over the step's pairs of each
per-pair value the loss returns, under the names the Hugging Face trainers (TRL) use where one exists
(`rewards/chosen`, `logps/chosen`, `logits/chosen`, ...), then ours (`oracle/margin`, `distill/sq_error`, ...);
held-out values carry the `eval_` prefix (`eval_loss`, `eval_rewards/accuracies`), as the HF Trainer writes
them. The README's "Metrics" table gives every name's formula. --report_to tensorboard and/or wandb send the
same rows to those tools as well (each is optional: installed only by users who ask for it).
"""
import contextlib
import os

# the loss's metric key (losses.py) -> the logged name
LOG_NAMES = {"chosen_rewards": "rewards/chosen", "rejected_rewards": "rewards/rejected",
             "margins": "rewards/margins", "accuracies": "rewards/accuracies",
             "chosen_logits_mean": "logits/chosen", "rejected_logits_mean": "logits/rejected",
             "oracle_margin": "oracle/margin", "student_margin": "student/margin",
             "distill_loss": "distill/sq_error", "focal_weight": "focal/weight", "pref_loss": "pref/loss",
             "pref_logit": "pref/logit", "forward_kl": "kl/forward", "nll_loss": "nll_loss",
             "log_odds_ratio": "log_odds_ratio", "reward_shift": "bco/delta", "reward_mean": "bco/reward_mean",
             "modulation": "discopop/modulation", "z_ref": "kto/z_ref", "wpo_weight": "wpo/weight",
             "member": "edpo/member", "madpo_weight": "madpo/weight", "adpo_target": "adpo/target",
             "fast_dpo": "ofs/fast_dpo", "slow_dpo": "ofs/slow_dpo", "fast_leads": "ofs/fast_leads",
             "preference": "online_ipo/preference", "targets": "dno/target"}
SINKS = ("tensorboard", "wandb")


def metric_sums(metrics, losses, logps):
    """Per-pair values summed over a micro-batch (divided by the window's pair count when logged)."""
    out = {"loss": losses.detach().sum().item(), "logps/chosen": logps[0].detach().sum().item(),
           "logps/rejected": logps[1].detach().sum().item()}
    for k, v in metrics.items():
        if (k in LOG_NAMES or k.startswith("loss/")) and v.dim() == 1:   # loss/<name>: a combination's members
            out[LOG_NAMES.get(k, k)] = v.float().sum().item()
    return out


def check_report_to(report_to):
    """--report_to: empty, or comma-separated names from SINKS whose packages are installed."""
    import importlib.util
    for name in filter(None, report_to.split(",")):
        if name not in SINKS:
            raise ValueError(f"--report_to {name!r}: choose from {', '.join(SINKS)} (comma-separated), or leave it empty")
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"--report_to {name} needs its package: pip install {name}")


@contextlib.contextmanager
def open_sinks(report_to, out, config, start_step=0):
    """`with open_sinks(...) as report:` report(row) sends a logged row to the --report_to sinks (metrics.jsonl
    is written by train.py itself); they are closed when the block ends, however it ends.
    tensorboard: event files in <out>/tensorboard (a resumed run purges the steps after its checkpoint);
    wandb: one run named after <out>, the config attached (WANDB_MODE=offline keeps it on disk)."""
    writers, closers = [], []
    names = [n for n in report_to.split(",") if n]
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=start_step + 1 if start_step else None)
        writers.append(lambda row: [tb.add_scalar(k, v, row["step"]) for k, v in row.items()
                                    if k != "step" and isinstance(v, (int, float))])
        closers.append(tb.close)
    if "wandb" in names:
        import wandb
        run = wandb.init(name=os.path.basename(os.path.abspath(out)), dir=out, config=config,
                         resume="allow" if start_step else None)
        writers.append(lambda row: run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"]))
        closers.append(run.finish)

    def write(row):
        for w in writers:
            w(row)
    try:
        yield write
    finally:
        for close in closers:
            close()
