"""Run directories: claimed by one run only, with every setting of the run in config.json.

A run directory belongs to the process that created its config.json: the file is written under a
temporary name and hard-linked to its final name, which fails when it exists, so of two runs
started on one directory exactly one gets it. config.json records what decides the run's result —
fbprop's version, the data's identity (name, split, checksums), the model spec and the training
settings — and `--resume` continues with exactly those.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from fbprop.files import atomic_write

RUN_FILES = ("config.json", "checkpoint.npz", "best.npz", "metrics.json", "metrics.csv", "result.json")


class RunExists(ValueError):
    """The output directory already holds a run."""


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_FILES)


def claim(out: Path, config: dict) -> None:
    """Make `out` this run's directory and write config.json there, or raise RunExists."""
    if holds_run(out):
        raise RunExists(f"{out} already holds a run; pass --resume {out / 'checkpoint.npz'} or another --out")
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=1, sort_keys=True).encode()
    temp = out / f".config.json.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(temp, "xb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(temp, out / "config.json")                       # atomic, and fails when another run has it
    except (FileExistsError, FileNotFoundError):                 # not found: the run that won removed our temp file
        raise RunExists(f"{out} already holds a run (another process claimed it); choose another --out") from None
    finally:
        temp.unlink(missing_ok=True)


def new_run_dir(parent: Path, stem: str, config: dict) -> Path:
    """A fresh directory parent/stem-TIME (suffixed -2, -3, … when that is taken), claimed for this run."""
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        out = parent / (base if i == 1 else f"{base}-{i}")
        try:
            claim(out, config)
            return out
        except RunExists:
            continue
    raise RunExists(f"{parent}: no free run directory named {base}-N")


def write_config(out: Path, config: dict) -> None:
    """Rewrite config.json of a run this process owns (on resume, with the extended epochs)."""
    text = json.dumps(config, indent=1, sort_keys=True)
    atomic_write(out / "config.json", lambda f: f.write(text.encode()))
