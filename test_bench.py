"""bench.py: the benchmark's printed numbers agree with each other."""
import json

import pytest


def test_benchmark_prints_consistent_numbers(cache, tmp_path, capsys):
    import bench
    res = bench.main(["--method", "dpo", "--model", "tiny", "--data", "embedded-tiny", "--steps", "2",
                      "--batch_size", "4", "--micro_batch_size", "2", "--max_length", "48", "--max_prompt_length", "16"])
    assert res["tokens_per_step"] == 2 * 4 * 48
    assert res["step_s"] > 0 and res["tokens_per_s"] == pytest.approx(res["tokens_per_step"] / res["step_s"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "dpo"
