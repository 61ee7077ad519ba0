"""What a run logs (runlog.py): metric names as the Hugging Face trainers write them, the TensorBoard sink,
and --report_to errors.
"""
import pytest

from train_test_helpers import metrics, run


def test_logged_names_follow_the_hugging_face_trainers(cache, tmp_path):
    run(tmp_path, "--method", "dpo", "--epochs", "1", "--eval_every", "2")
    rows = metrics(tmp_path)
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen", "logits/chosen",
                "logits/rejected", "grad_norm", "learning_rate"):
        assert key in rows[0], key
    assert "eval_loss" in rows[1] and "eval_rewards/accuracies" in rows[1] and "eval_logits/chosen" in rows[1]
    assert not any(k.startswith("eval/") for row in rows for k in row)


def test_report_to_tensorboard_writes_the_logged_rows(cache, tmp_path):
    pytest.importorskip("tensorboard")       # optional: pip install tensorboard (not in requirements.txt)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run(tmp_path, "--method", "dpo", "--epochs", "1", "--report_to", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged == pytest.approx({row["step"]: row["loss"] for row in metrics(tmp_path)}, rel=1e-6)


@pytest.mark.parametrize("value, message", [("csv", "--report_to 'csv': choose from tensorboard, wandb"),
                                            ("wandb", "--report_to wandb needs its package: pip install wandb")])
def test_report_to_errors(cache, tmp_path, value, message):
    import importlib.util
    if value == "wandb" and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(SystemExit, match=message):
        run(tmp_path, "--method", "dpo", "--report_to", value)
