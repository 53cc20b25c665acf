"""Data-parallel training of a small classifier on synthetic MNIST-shaped data with PyTorch DDP.

Each replica is one process of the group. gpupool sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK
(`distributed: torch` in job.yaml), which `init_method="env://"` reads. Every rank draws different data
(seeded by its rank) and starts from different random weights; DistributedDataParallel broadcasts rank
0's weights at the start and all-reduces (averages) the gradients at every step, so all ranks end with
bit-identical parameters although each saw other data. Each rank prints one JSON line and, with --out,
writes it to OUT/rank-<rank>.json: its rank, the world size, its last loss, the mean loss over ranks, a
checksum of its data and a SHA-256 of its parameters (equal on every rank when all-reduce happened).

In a sweep (sweep.yaml), rank 0 reports its loss every --report-every steps with `gpupool.report`, which
does nothing outside a sweep; a trial the pruner stops is stopped by the server.

Run it alone for a quick check (one process, world size 1):
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 WORLD_SIZE=1 RANK=0 python train.py --steps 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gpupool

IMAGE_SHAPE = (1, 28, 28)
CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per rank and step (default 64)")
    parser.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default 0.5)")
    parser.add_argument("--out", type=Path, default=None, help="directory for rank-<n>.json results")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the other ranks")
    parser.add_argument("--report-every", type=int, default=5, help="steps between sweep reports (default 5)")
    return parser.parse_args()


def synthetic_batch(generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 28x28 images in which the band of rows 2*label, 2*label+1 is brighter (a learnable rule)."""
    labels = torch.randint(0, CLASSES, (batch_size,), generator=generator)
    images = 0.5 * torch.rand((batch_size, *IMAGE_SHAPE), generator=generator)
    rows = 2 * labels[:, None] + torch.arange(2)[None, :]
    images[torch.arange(batch_size)[:, None], 0, rows, :] += 0.5
    return images, labels


def build_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, CLASSES))


def parameter_checksum(model: nn.Module) -> str:
    """SHA-256 over the exact bytes of every parameter, in order."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(args: argparse.Namespace, rank: int, world_size: int) -> dict[str, object]:
    torch.manual_seed(rank)  # different initial weights per rank: DDP's broadcast makes them equal
    model = DistributedDataParallel(build_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(1000 + rank)  # different data per rank
    data_digest = hashlib.sha256()
    losses: list[float] = []
    for step in range(1, args.steps + 1):
        images, labels = synthetic_batch(generator, args.batch_size)
        data_digest.update(images.numpy().tobytes())
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()  # DDP all-reduces the gradients here
        optimizer.step()
        losses.append(loss.item())
        if rank == 0 and step % args.report_every == 0:
            gpupool.report(step, loss=loss.item())  # the sweep's objective; a no-op outside a sweep
    mean_loss = torch.tensor(losses[-1] if losses else 0.0)
    dist.all_reduce(mean_loss)
    return {
        "rank": rank,
        "world_size": world_size,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "steps": args.steps,
        "first_loss": round(losses[0], 6) if losses else None,
        "final_loss": round(losses[-1], 6) if losses else None,
        "mean_final_loss": round(mean_loss.item() / world_size, 6),
        "data_checksum": data_digest.hexdigest()[:16],
        "param_checksum": parameter_checksum(model.module),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = timedelta(seconds=args.timeout)
    # the rendezvous store (served by rank 0 on MASTER_ADDR:MASTER_PORT), kept for the ordered teardown below
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        result = train(args, rank, world_size)
        print(json.dumps(result), flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"rank-{rank}.json").write_text(json.dumps(result) + "\n")
        dist.barrier()
    finally:
        leave_group(store, rank, world_size)


def leave_group(store: dist.TCPStore, rank: int, world_size: int) -> None:
    """Tear the group down one side at a time: every other rank first, then rank 0 once they all have.

    When two ranks close the connections between them at the same moment, gloo's I/O thread can meet a
    connection in the middle of closing and end the process with SIGABRT after the work is done. A rank whose
    peer closes while it is itself idle just marks the connection closed. Rank 0 serves the store, so it
    stays until the others have said they are gone."""
    if rank != 0:
        dist.destroy_process_group()
        store.add("left", 1)
        return
    deadline = time.monotonic() + 30.0  # the others left at most this long ago, or died: go regardless
    while store.add("left", 0) < world_size - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
