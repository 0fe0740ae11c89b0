"""Worker for tests/test_resume.py: train a seeded CNN+MLP for optimizer steps [a, b).

    python tests/_resume_worker.py JOBS.json

JOBS.json is a list of jobs, each a dict:

    {"opt": "sgd" | "adam", "algo": "static" | "set" | "rigl", "a": 0, "b": 24,
     "total": 24, "seed": 0, "load": "ck.pt" | null, "save": "out.pt"}

A job builds the model (``torch.manual_seed(seed)``), the optimizer and the Sparsifier, loads
``load`` (model, optimizer and sparsifier state dicts, read with ``weights_only=True``) if given,
trains steps a..b-1 on a data stream seeded per step index (so it can start at any step) and
saves the three state dicts to ``save``. The functions are also imported by the in-process tests.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

import sparsetrain as st

DENSITY = 0.2
INTERVAL = 4


class CNNMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make_optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)
    raise ValueError(name)


def make_algorithm(name: str):
    if name == "static":
        return st.Static(density=DENSITY)
    if name == "set":
        return st.SET(density=DENSITY, update_interval=INTERVAL)
    if name == "rigl":
        return st.RigL(density=DENSITY, update_interval=INTERVAL)
    raise ValueError(name)


def build(opt: str, algo: str, total: int, seed: int = 0):
    torch.manual_seed(seed)
    model = CNNMLP()
    optimizer = make_optimizer(opt, model.parameters())
    sp = st.Sparsifier(model, optimizer, make_algorithm(algo), total_steps=total)
    return model, optimizer, sp


def batch(step: int, n: int = 8):
    g = torch.Generator().manual_seed(7919 * step + 17)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def train(model, optimizer, sp, a: int, b: int) -> None:
    crit = nn.CrossEntropyLoss()
    model.train()
    for step in range(a, b):
        assert sp.step == step, (sp.step, step)
        x, y = batch(step)
        crit(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def checkpoint(model, optimizer, sp) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sparsifier": sp.state_dict()}


def restore(model, optimizer, sp, ck: dict, sparsifier: bool = True) -> None:
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if sparsifier:
        sp.load_state_dict(ck["sparsifier"])


def run_job(job: dict) -> None:
    model, optimizer, sp = build(job["opt"], job["algo"], job["total"], job.get("seed", 0))
    if job.get("load"):
        restore(model, optimizer, sp, torch.load(job["load"], weights_only=True))
    train(model, optimizer, sp, job["a"], job["b"])
    torch.save(checkpoint(model, optimizer, sp), job["save"])


def main(argv) -> int:
    torch.set_num_threads(1)
    with open(argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
