"""Several processes, one run: train.py under torchrun, data-parallel (DDP) or with the model sharded (FSDP2).

    torchrun --standalone --nproc_per_node 4 train.py --method dpo --batch_size 64 --micro_batch_size 4
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py ...
    torchrun --standalone --nproc_per_node 8 train.py --fsdp ...       # a model too big for one GPU

train.py calls `setup` once and does everything that involves other processes through the `Dist` it returns.
In one process (plain `python train.py`) every method of `Dist` is the identity or a no-op: no process group,
no wrapper, no extra pass, so the single-process run is what it always was.

What each rank does (README, "Several GPUs and several machines"):
 1) every rank computes the same step plan (train.windows: a function of seed and epoch) and takes micro-batches
    r, r + N, r + 2N, ... of every window (`share`): the micro-batches are exactly those one process would
    accumulate, only spread over N ranks;
 2) gradients: each micro-batch adds sum(per-pair losses) * N / (pairs in the whole window); DDP (and FSDP's
    reduce-scatter) AVERAGE over the N ranks, which divides the N back out (derivation in train.py's loop);
 3) before the loop, rank 0 builds what is cached on disk (the embedded task, the Oracle and its scores)
    while the others wait (`main_first`), then they read the same files; pi_ref's log-probs are computed
    sharded (each rank a share of the pairs) and gathered (reference.py);
 4) metrics are summed over ranks before rank 0 logs them (`all_sum`); rank 0 alone writes logs, metrics and
    checkpoints; every rank resumes from the checkpoint rank 0 names (`from_rank0`); a stop signal seen by any
    rank stops all of them after the same step (`any_rank`).
NOTE: --out and the cache directory must be one filesystem for all ranks (all nodes): rank 0 writes, the
others read. `check_shared` tests that at startup and says so.
"""
import contextlib
import gc
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Rank 0 may build the embedded task, train the Oracle and score the data while the others wait at a barrier.
BARRIER_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank (0 = the one that writes), world (number of processes), the
    device it trains on, and whether the model is sharded (--fsdp) rather than replicated (DDP)."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    fsdp: bool = False
    local_world: int = 1           # processes on this node (torchrun's --nproc_per_node)
    nodes: int = 1                 # torchrun's --nnodes
    owner: bool = False            # this setup joined the process group, so its teardown leaves it (online.py joins
                                   # once for all its rounds; each round's train.train then finds the group joined)

    # ---- who does what ------------------------------------------------------------------------------------
    def share(self, items, pad=True):
        """This rank's items of a list, strided (rank r takes r, r + N, ...) -> [(item, counted)].
        pad=True gives every rank the same number of entries, filling with (items[0], False): a forward that
        counts for nothing. DDP needs every rank in each window's gradient all-reduce, and FSDP needs every
        rank in every forward and backward (each all-gathers the weights); only a short last window pads."""
        mine = [(item, True) for item in items[self.rank::self.world]]
        rounds = -(-len(items) // self.world)                                   # ceil(len / N)
        return mine + [(items[0], False)] * (rounds - len(mine)) if pad else mine

    def main_first(self):
        """`with d.main_first():` rank 0 runs the block first (building the caches), then the others run it
        (reading them). In one process, a no-op."""
        return _main_first(self)

    # ---- collectives (identity in one process) -----------------------------------------------------------
    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values):
        """{name: float} summed over ranks (keys missing on a rank count as 0); in rank order, so every rank
        gets the same floats."""
        if self.world == 1:
            return values
        out = {}
        for part in self.gather(values):
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def any_rank(self, flag):
        """The largest of the ranks' integer flags (a signal number, or 0): one rank's SIGTERM stops all."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag or 0)], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def from_rank0(self, obj):
        """Rank 0's value of a picklable object, on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj):
        """[rank 0's obj, rank 1's, ...] on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # ---- the model ---------------------------------------------------------------------------------------
    def wrap(self, model):
        """DDP: the model replicated, gradients all-reduced (drdo's reward head is a submodule, so it is
        replicated and synchronised with the rest). FSDP: each transformer block, the reward head and the
        root sharded over the ranks (fully_shard, FSDP2). One process: the model itself."""
        if self.world == 1:
            return model
        if self.fsdp:
            return self.shard(model)
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model.to(self.device),
                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, model):
        """FSDP2: fully_shard every block the model names as unsplittable (HF's `_no_split_modules`, e.g.
        OPTDecoderLayer, LlamaDecoderLayer), the reward head (its own unit: it runs outside the LM's forward),
        then the root (embeddings, final norm, tied LM head). Each rank keeps 1/N of every weight, gradient
        and AdamW moment; a unit's full weights exist only during its forward and backward. fully_shard moves
        each unit to the device as it shards it, so the whole model is never on one GPU."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(self.device.type, (self.world,))
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh)
        if getattr(model, "reward_head", None) is not None:
            fully_shard(model.reward_head, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def local(self, model):
        """The model for passes without gradient synchronisation (evaluation, pi_ref, statistics): under
        DDP the replica inside the wrapper (no collective in its forward, so ranks may do different amounts
        of work); under FSDP the sharded model itself (every rank must take part in each forward: pad=True)."""
        return model.module if self.world > 1 and not self.fsdp else model

    def sync(self, model, last):
        """`with d.sync(model, last):` around one micro-batch's backward. DDP all-reduces gradients only on
        the window's last micro-batch (no_sync before); FSDP reduce-scatters after every micro-batch.
        NOTE: FSDP could also skip the reduce-scatter until the last micro-batch
        (set_requires_gradient_sync(False)), but it would then hold UNSHARDED gradients of the whole model
        between micro-batches, which is what a model too big for one GPU cannot afford; accumulating
        sharded gradients costs one reduce-scatter per micro-batch instead."""
        if self.world == 1 or self.fsdp or last:
            return contextlib.nullcontext()
        return model.no_sync()

    def full_state_dict(self, model):
        """FSDP: the whole model's weights gathered to rank 0's CPU ({} on other ranks; every rank must call
        it), so checkpoints stay plain Hugging Face checkpoints. Otherwise None: save the model itself."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # a tied weight (OPT's lm_head = embed_tokens) is listed under both names; keep the name the model's
        # parameters go by, as save_pretrained does for an unsharded model
        names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        return {k: v for k, v in full.items() if k in names}

    def optimizer_state(self, model, opt):
        """The optimizer's state in the single-process format (parameter index -> state), so a checkpoint
        resumes in one process, under DDP or under FSDP alike. FSDP: gathered to rank 0 (every rank calls)."""
        if not self.fsdp:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        index = {name: i for i, name in enumerate(_trainable_names(model))}
        return {"state": {index[name]: s for name, s in full.get("state", {}).items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full.get("param_groups", [])]}

    def load_optimizer_state(self, model, opt, state):
        """Inverse of optimizer_state: every rank passes the checkpoint's (whole) state; FSDP keeps its shard."""
        if not self.fsdp:
            return opt.load_state_dict(state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        names = _trainable_names(model)
        full = {"state": {names[i]: s for i, s in state["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, opt, optim_state_dict=full, options=StateDictOptions(full_state_dict=True))

    # ---- launch ------------------------------------------------------------------------------------------
    def launcher(self):
        """The command prefix that restarts this run (config.resume_command)."""
        if self.world == 1:
            return "python"
        if self.nodes == 1:
            return f"torchrun --standalone --nproc_per_node {self.local_world}"
        return (f"torchrun --nnodes {self.nodes} --nproc_per_node {self.local_world} --rdzv_backend c10d "
                f"--rdzv_endpoint HOST:PORT")

    def check_shared(self, *dirs):
        """Rank 0 writes a marker file in each directory; every rank must see it, or the run stops with a
        message naming the directory (rank 0's checkpoints and caches are read by all ranks)."""
        if self.world == 1:
            return
        token = self.from_rank0(uuid.uuid4().hex)
        for d in dirs:
            marker = os.path.join(d, f".rank0-{token}")
            if self.rank == 0:
                open(marker, "w").close()
            self.barrier()
            missing = self.any_rank(0 if os.path.exists(marker) else 1)
            self.barrier()
            if self.rank == 0:
                os.remove(marker)
            if missing:
                raise ValueError(f"{d} is not shared by all {self.world} processes: under torchrun, rank 0 writes "
                                 "the checkpoints and caches every rank reads. Put --out and DRDO_CACHE on a "
                                 "filesystem every node mounts.")


def _trainable_names(model):
    """Names of the parameters the optimizer holds, in its order (train.py: every parameter that trains)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


@contextlib.contextmanager
def _main_first(d):
    if d.rank != 0:
        d.barrier()                          # wait for rank 0 to build
    yield                                    # (an error on rank 0 ends it here; torchrun then stops the others)
    if d.rank == 0:
        d.barrier()                          # rank 0 done: release the others


def setup(fsdp=False):
    """-> Dist. Under torchrun (WORLD_SIZE > 1) join the process group: nccl with one GPU per process
    (cuda:LOCAL_RANK) when CUDA is available, else gloo on the CPU. Otherwise one process on cuda or cpu."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return Dist(rank=dist.get_rank(), world=world, device=device, fsdp=fsdp, local_world=local_world,
                nodes=int(os.environ.get("GROUP_WORLD_SIZE", world // local_world)), owner=owner)


def teardown(d):
    """Leave the process group, with the DDP/FSDP wrapper already freed. The wrapper sits in a reference
    cycle and holds the group, so without a collection here it is freed during interpreter shutdown, where
    tearing down gloo's threads sometimes aborts a process that has finished all its work ("terminate called
    without an active exception", SIGABRT, and torchrun reports the run failed). Measured with a 2-process
    gloo DDP script shaped like this loop (torch 2.13, the other core kept busy): 7 aborts in 205 runs without
    the collection (2 of them in 60 runs interleaved with 60 runs with it), 0 in 175 with it."""
    if d.world > 1 and dist.is_initialized():
        gc.collect()                         # the wrapper (and its reducer) go while the group is whole
        if d.owner:                          # a group joined by a caller (online.py) is left by that caller
            dist.destroy_process_group()
