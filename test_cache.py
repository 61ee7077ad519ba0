"""The cache's guarantees (cache.py): built once by processes started together, never half-written, never used
damaged. First the mechanism on a toy entry (fast, every branch), then the real entries: two processes building
the embedded task at once, every file of every entry type cut mid-line and at a line boundary, and the runs that
read them (a scores file cut to 3 rows no longer trains on 3 pairs). Last, the run directory's log on resume.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import cache
import checkpoint
from train_test_helpers import HERE, run


def writer(text="a\nb\nc\n", calls=None):
    """make(tmp) for a toy entry: rows.jsonl and notes.txt; each call is counted in `calls`."""
    def make(tmp):
        if calls is not None:
            calls.append(tmp)
        with open(os.path.join(tmp, "rows.jsonl"), "w") as f:
            f.write("".join(json.dumps({"row": x}) + "\n" for x in text.split()))
        with open(os.path.join(tmp, "notes.txt"), "w") as f:
            f.write(text)
    return make


# ------------------------------------------------------------------------------------------------------------
# The mechanism, on a toy entry
# ------------------------------------------------------------------------------------------------------------
def test_an_entry_is_built_once_and_then_reused(tmp_path):
    entry, calls = str(tmp_path / "toy-1"), []
    assert cache.build(entry, writer(calls=calls), log=lambda *_: None) == entry
    assert cache.build(entry, writer(calls=calls), log=lambda *_: None) == entry
    assert len(calls) == 1 and calls[0] == f"{entry}.tmp-{os.getpid()}"
    manifest = json.loads((tmp_path / "toy-1" / cache.MANIFEST).read_text())
    assert manifest["entry"] == "toy-1" and manifest["files"]["rows.jsonl"]["rows"] == 3
    assert sorted(os.listdir(tmp_path)) == ["toy-1", "toy-1.lock"]          # no .tmp-<pid> left


def cut_mid_line(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2 + 1] if data[len(data) // 2:len(data) // 2 + 1] != b"\n"
                           else data[:len(data) // 2])


def cut_at_line_boundary(path):
    lines = open(path, "rb").read().splitlines(keepends=True)
    open(path, "wb").writelines(lines[:len(lines) // 3])                # a one-line file: nothing left


def same_size_overwrite(path):
    data = bytearray(open(path, "rb").read())
    data[0] = ord("x") if data[0] != ord("x") else ord("y")
    open(path, "wb").write(bytes(data))


DAMAGES = {
    "rows cut mid-line": ("rows.jsonl", cut_mid_line, "2 rows, the manifest says 3"),
    "rows cut at a line boundary": ("rows.jsonl", cut_at_line_boundary, "1 rows, the manifest says 3"),
    "text cut at a line boundary": ("notes.txt", cut_at_line_boundary, "bytes, the manifest says"),
    "same size, other bytes": ("notes.txt", same_size_overwrite, "differs from the manifest's sha256"),
    "file removed": ("notes.txt", os.remove, "missing (the manifest lists it)"),
    "manifest removed": (cache.MANIFEST, os.remove, "missing (a build that was interrupted"),
    "manifest cut": (cache.MANIFEST, cut_mid_line, "unreadable"),
}


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_entry_is_named_rebuilt_or_refused_never_used(tmp_path, kind):
    name, damage, says = DAMAGES[kind]
    entry = str(tmp_path / "toy-1")
    cache.build(entry, writer(), log=lambda *_: None)
    damage(os.path.join(entry, name))
    assert cache.problem(entry).startswith(os.path.join(entry, name)) and says in cache.problem(entry)
    # a directory the user named: refused, the file named with the fix, nothing deleted
    with pytest.raises(cache.CacheError, match=f"{name}: .*Delete it by hand"):
        cache.build(entry, writer(), log=lambda *_: None, rebuild=False, fix="Delete it by hand.")
    assert os.path.isdir(entry)
    # a cache entry: rebuilt, saying which file was wrong
    logs, calls = [], []
    cache.build(entry, writer(calls=calls), log=logs.append)
    assert len(calls) == 1 and any("is damaged and is rebuilt" in line and name in line for line in logs)
    assert cache.problem(entry) is None and (tmp_path / "toy-1" / "notes.txt").read_text() == "a\nb\nc\n"


def test_an_entry_copied_under_another_name_is_caught(tmp_path):
    cache.build(str(tmp_path / "toy-1"), writer(), log=lambda *_: None)
    shutil.copytree(tmp_path / "toy-1", tmp_path / "toy-2")
    assert "written for the entry 'toy-1', not for 'toy-2'" in cache.problem(str(tmp_path / "toy-2"))


def test_a_failed_build_leaves_nothing(tmp_path):
    def failing(tmp):
        writer()(tmp)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cache.build(str(tmp_path / "toy-1"), failing)
    assert sorted(os.listdir(tmp_path)) == ["toy-1.lock"]


# a process that builds the toy entry of argv[1], waiting inside make() until the file argv[2] exists
SLOW_BUILD = """
import os, sys, time
sys.path.insert(0, {here!r})
import cache
def make(tmp):
    with open(os.path.join(tmp, "rows.jsonl"), "w") as f:
        f.write('{{"row": 1}}\\n')
    with open(sys.argv[1] + ".calls", "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.02)
cache.build(sys.argv[1], make, log=lambda line: print(line, flush=True))
print("done", flush=True)
"""


def slow_build(entry, release):
    return subprocess.Popen([sys.executable, "-c", SLOW_BUILD.format(here=HERE), entry, release],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_a_killed_build_leaves_nothing_that_a_later_run_takes_for_finished(tmp_path):
    entry = str(tmp_path / "toy-1")
    p = slow_build(entry, str(tmp_path / "never"))
    wait_for(lambda: os.path.exists(entry + ".calls"))                  # inside make(), holding the lock
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(entry) and os.path.isdir(f"{entry}.tmp-{p.pid}")
    assert cache.problem(entry) == f"{entry}: missing"
    logs = []
    cache.build(entry, writer(), log=logs.append)                         # the lock died with its process
    assert any(f"removing {entry}.tmp-{p.pid}, left by a build that was killed" in line for line in logs)
    assert cache.problem(entry) is None and not os.path.exists(f"{entry}.tmp-{p.pid}")


def test_a_second_process_waits_for_the_first_and_reuses_its_build(tmp_path):
    entry, release = str(tmp_path / "toy-1"), str(tmp_path / "release")
    first = slow_build(entry, release)
    wait_for(lambda: os.path.exists(entry + ".calls"))                  # the first is building
    second = slow_build(entry, release)
    time.sleep(1.0)                                                       # the second is blocked on the lock
    assert second.poll() is None and not os.path.exists(entry)
    open(release, "w").close()
    out = [p.communicate(timeout=60)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert open(entry + ".calls").read().split() == [str(first.pid)]     # built once, by the first
    assert "another process is building" in out[1] and "was built by another process; reusing it" in out[1]
    assert cache.problem(entry) is None and not any(".tmp-" in n for n in os.listdir(tmp_path))


OTHER_BUILD = """
import os, sys
sys.path.insert(0, {here!r})
import cache
def make(tmp):
    open(os.path.join(tmp, "notes.txt"), "w").write("theirs")
cache.build(sys.argv[1], make)
"""


def test_without_a_working_lock_the_loser_of_the_rename_uses_the_winners_entry(tmp_path, monkeypatch):
    # Windows (no fcntl) or a file system whose flock does nothing: both processes build; here the "other
    # process" finishes its rename while this one is still inside make()
    class no_lock:
        def __init__(self, *_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False
    monkeypatch.setattr(cache, "_lock", no_lock)
    entry, logs = str(tmp_path / "toy-1"), []

    def racing(tmp):
        writer("mine")(tmp)
        other = subprocess.run([sys.executable, "-c", OTHER_BUILD.format(here=HERE), entry], capture_output=True)
        assert other.returncode == 0, other.stderr                        # the other process wins the race
    cache.build(entry, racing, log=logs.append)
    assert (tmp_path / "toy-1" / "notes.txt").read_text() == "theirs"
    assert any("built by another process at the same time; using that one" in line for line in logs)
    assert not any(".tmp-" in n for n in os.listdir(tmp_path))


# ------------------------------------------------------------------------------------------------------------
# The real entries
# ------------------------------------------------------------------------------------------------------------
BUILD_TINY_TASK = ("import embedded; t = embedded.embedded_task(embedded.EMBEDDED_PRESETS['embedded-tiny']); "
                   "print('pairs', len(t['train']), t['dir'])")


def test_two_processes_building_the_same_task_at_once_both_finish(tmp_path):
    # a fresh cache (a fresh clone's), two runs started together: before cache.py the second crashed with
    # "OSError: [Errno 39] Directory not empty" and left its .tmp-<pid> directory behind
    env = dict(os.environ, DRDO_CACHE=str(tmp_path / "cache"))
    start = lambda: subprocess.Popen([sys.executable, "-c", BUILD_TINY_TASK], cwd=HERE, env=env, text=True,  # noqa: E731
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = start()
    wait_for(lambda: os.path.isdir(tmp_path / "cache") and any(".tmp-" in n for n in os.listdir(tmp_path / "cache")),
             seconds=120)                                                 # the first is building pi_ref
    second = start()
    out = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, out
    assert out[0].count("SFT:") >= 1 and "SFT:" not in out[1]             # pi_ref trained once, by the first
    assert "another process is building" in out[1] and "reusing it" in out[1]
    assert out[0].splitlines()[-1] == out[1].splitlines()[-1]             # the same pairs, from the same entry
    assert not any(".tmp-" in n for n in os.listdir(tmp_path / "cache"))


DRDO_ARGS = ["--epochs", "0.5", "--oracle_epochs", "1"]


@pytest.fixture(scope="module")
def entries(tmp_path_factory, tiny_task):
    """A private copy of a cache holding one entry of each type: the tiny task and its pi_ref, an Oracle and its
    scores of the pairs (a DRDO run), pi_ref's log-probs (a DPO run)."""
    for method in ("drdo", "dpo"):
        run(tmp_path_factory.mktemp(method), "--method", method, *DRDO_ARGS)
    copy = tmp_path_factory.mktemp("cache") / "cache"
    shutil.copytree(os.environ["DRDO_CACHE"], copy, symlinks=True,
                    ignore=shutil.ignore_patterns("*.lock", "*.tmp-*", "*.damaged-*"))
    return copy


def entry_files():
    """(entry prefix, file) for each type of file each entry type holds."""
    return [("embedded-ref-", "model.safetensors"), ("embedded-ref-", "config.json"),
            ("embedded-ref-", "tokenizer.json"), ("embedded-task-", "train.jsonl"), ("embedded-task-", "test.jsonl"),
            ("embedded-task-", "reference_eval_prompts.jsonl"), ("embedded-task-", "eval_prompts.json"),
            ("embedded-task-", "stats.json"), ("oracle-", "report.json"), ("oracle-", "member-0/model.safetensors"),
            ("oracle-", "member-0/reward_head.pt"), ("oracle-", "member-0/seqcls/model.safetensors"),
            ("scored-", "scores.jsonl"), ("reflogps-", "logps.pt")]


@pytest.mark.parametrize("cut", [cut_mid_line, cut_at_line_boundary], ids=["mid-line", "line boundary"])
@pytest.mark.parametrize("prefix,name", entry_files(), ids=lambda x: x)
def test_every_cached_file_cut_short_is_detected_and_named(entries, tmp_path, prefix, name, cut):
    source = next(entries / d for d in sorted(os.listdir(entries)) if d.startswith(prefix)
                  and os.path.exists(entries / d / name))
    entry = tmp_path / source.name
    shutil.copytree(source, entry)
    assert cache.problem(str(entry)) is None
    cut(str(entry / name))
    assert cache.problem(str(entry)).startswith(f"{entry / name}: ")


def test_a_scores_file_cut_to_3_rows_is_rebuilt_not_trained_on(entries, tmp_path, monkeypatch):
    # the case: the Oracle scores of the training pairs cut at a line boundary to 3 of their rows; drdo
    # trained on 3 pairs and exited 0. Now the run says which file was cut, rescores, and trains on all of them
    private = tmp_path / "cache"
    shutil.copytree(entries, private)
    monkeypatch.setenv("DRDO_CACHE", str(private))
    scores = [private / d / "scores.jsonl" for d in os.listdir(private) if d.startswith("scored-")]
    full = {p: len(p.read_text().splitlines()) for p in scores}
    for p in scores:
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:3]))
    s = run(tmp_path, "--method", "drdo", *DRDO_ARGS)
    assert s["train_pairs"] == max(full.values())                        # the training pairs' scores, all rows
    # its training and held-out pairs' scores are whole again (the session cache copied here may also hold
    # other runs' scores, cut above and not read by this run)
    assert sum(len(p.read_text().splitlines()) == full[p] for p in scores) >= 2


def test_a_task_file_cut_mid_line_is_rebuilt_with_a_message_naming_it(entries, tmp_path, monkeypatch, capsys):
    private = tmp_path / "cache"
    shutil.copytree(entries, private)
    monkeypatch.setenv("DRDO_CACHE", str(private))
    task = next(private / d for d in os.listdir(private) if d.startswith("embedded-task-"))
    rows = len((task / "train.jsonl").read_text().splitlines())
    cut_mid_line(str(task / "train.jsonl"))
    s = run(tmp_path, "--method", "simpo", "--epochs", "0.5")
    printed = capsys.readouterr().out
    assert f"{task / 'train.jsonl'}: " in printed and "is damaged and is rebuilt" in printed
    assert s["train_pairs"] == rows and len((task / "train.jsonl").read_text().splitlines()) == rows


# ------------------------------------------------------------------------------------------------------------
# A run directory: what a resume reads
# ------------------------------------------------------------------------------------------------------------
def test_a_checkpoint_file_cut_at_a_line_boundary_is_caught_by_its_manifest(cache_dir_run):
    ckpt = checkpoint.latest(cache_dir_run)
    texts = [n for n in os.listdir(ckpt) if n.endswith((".txt", ".json")) and n != cache.MANIFEST]
    assert texts
    for name in texts:
        shutil.copy(os.path.join(ckpt, name), os.path.join(ckpt, name + ".bak"))
        cut_at_line_boundary(os.path.join(ckpt, name))
        with pytest.raises(ValueError, match=f"{name}: .*bytes, the manifest says"):
            checkpoint.verify(ckpt)
        shutil.move(os.path.join(ckpt, name + ".bak"), os.path.join(ckpt, name))
    assert checkpoint.verify(ckpt) == ckpt


@pytest.fixture
def cache_dir_run(cache, tmp_path):
    run(tmp_path, "--method", "sft", "--epochs", "0.5", "--save_every", "2")
    return str(tmp_path / "run")


def test_the_log_of_a_crashed_run_loses_its_cut_last_line_and_a_damaged_log_is_named(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)]
    log.write_text("".join(rows) + '{"step": 6, "lo')                    # killed while appending step 6
    checkpoint.truncate_log(str(log), 4)
    assert log.read_text() == "".join(rows[:4])
    log.write_text(rows[0] + '{"step": 2, "lo\n' + "".join(rows[2:]))    # a damaged line before the last
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2 of 5: not JSON"):
        checkpoint.truncate_log(str(log), 4)
    log.write_text("".join(rows[:2]))                                    # rows lost before the checkpoint
    with pytest.raises(ValueError, match=r"metrics.jsonl: its last row is step 2, the checkpoint's is 4"):
        checkpoint.truncate_log(str(log), 4)
