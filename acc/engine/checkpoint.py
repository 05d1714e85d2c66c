"""Checkpoints on disk: a folder per checkpoint, written to a temp folder and renamed (atomic).

    <root>/<id>/weights.safetensors     model tensors ("model.<param>") and task heads ("task.<name>.<param>")
    <root>/<id>/optimizer.safetensors   optimizer state per parameter ("<param name>::<state key>")
    <root>/<id>/meta.json               model config, task specs, optimizer settings, step, parent, ...

Nothing here unpickles: tensors come from safetensors, the rest from JSON. The meta records the
sha256 of each tensor file as written, and reading checks it: a flipped byte inside a tensor, which
safetensors would load as a wrong value, is refused with the file named instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

FORMAT_VERSION = 1
STATE_SEPARATOR = "::"


def new_checkpoint_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class CheckpointData:
    meta: dict
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, dict[str, torch.Tensor]]  # parameter name -> optimizer state

    def model_state(self) -> dict[str, torch.Tensor]:
        return _strip_prefix(self.weights, "model.")

    def head_state(self, task: str) -> dict[str, torch.Tensor]:
        return _strip_prefix(self.weights, f"task.{task}.")


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(root: Path, checkpoint_id: str, weights: dict[str, torch.Tensor],
                     optimizer: dict[str, dict[str, torch.Tensor]], meta: dict) -> Path:
    """Write a checkpoint folder atomically; a crash mid-write leaves only a `.tmp-*` folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_id
    if final.exists():
        raise FileExistsError(f"checkpoint {checkpoint_id} already exists at {final}")
    tmp = root / f".tmp-{checkpoint_id}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = dict(zip(("weights.safetensors", "optimizer.safetensors"), pack_tensors(weights, optimizer)))
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files["meta.json"] = json.dumps({"format": FORMAT_VERSION, "id": checkpoint_id, **meta, "digests": digests},
                                    indent=2).encode()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_checkpoint(path: Path) -> CheckpointData:
    """Read a checkpoint folder (tensors onto the CPU); a missing or broken part is a ValueError."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        raw = {name: (path / name).read_bytes() for name in ("weights.safetensors", "optimizer.safetensors")}
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint at {path} is unreadable: {e}") from e
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint at {path} has format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    for name, expected in meta.get("digests", {}).items():  # checkpoints from before digests have none
        if name in raw and hashlib.sha256(raw[name]).hexdigest() != expected:
            raise ValueError(f"checkpoint at {path} is corrupted: {path / name} does not match the sha256 "
                             "recorded when it was saved; nothing was loaded")
    try:
        weights, optimizer = unpack_tensors(raw["weights.safetensors"], raw["optimizer.safetensors"])
    except (ValueError, SafetensorError) as e:
        raise ValueError(f"checkpoint at {path} is unreadable: {e}") from e
    return CheckpointData(meta=meta, weights=weights, optimizer=optimizer)


def pack_tensors(weights: dict[str, torch.Tensor],
                 optimizer: dict[str, dict[str, torch.Tensor]]) -> tuple[bytes, bytes]:
    """Weights and optimizer state as two safetensors blobs (CPU copies): a checkpoint's files, and
    what rank 0 sends the other ranks after a structural change."""
    flat = {f"{param}{STATE_SEPARATOR}{key}": _cpu(value)
            for param, state in optimizer.items() for key, value in state.items()}
    return save({k: _cpu(v) for k, v in weights.items()}), save(flat)


def unpack_tensors(weights: bytes, optimizer: bytes) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """The inverse of `pack_tensors` (tensors on the CPU; never a pickle)."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load(optimizer).items():
        param, state_key = key.rsplit(STATE_SEPARATOR, 1)
        state.setdefault(param, {})[state_key] = value
    return load(weights), state


def remove_incomplete(root: Path) -> None:
    """Delete `.tmp-*` folders left by a crash during a write."""
    if root.exists():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
