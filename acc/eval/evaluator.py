"""The factoring evaluation of one model: does its latent factor the data the way it was asked to?

`FactoringEvaluator.evaluate(model, tasks)` encodes the held-out sets (`acc.eval.data`), scores
UFR with its parts and the slot x concept information matrix (`acc.eval.ufr`), the literature's
MIG and DCI (`acc.eval.literature`), and draws, per slot group, the traversal grid with its
cleanliness, the sort-by-activation grid and the attention overlays (`acc.eval.figures`). It
returns a JSON-able report (DESIGN §4 FactoringReport) and the figures as image arrays; it never
trains, and never touches anything but the model it is given (in eval mode, without gradients).

Which slot a concept is scored on, `S(c)`: the slot of that name, else the latent group of a task
that supervises it (a RegressionTask with that target, a ClassificationTask for `digit`); `digit` is
a concept only where a task supervises a slot for it. A model without named slots has its latent
cut into equal chunks, matched to the concepts by the Hungarian rule; the report says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from acc.eval import figures
from acc.eval.classifier import DigitClassifier
from acc.eval.data import SOURCES, EvalSets
from acc.eval.literature import dci, mig
from acc.eval.ufr import Concept, ContextFamily, ufr_report
from acc.protocol import recon_probabilities

MEASURED = ("thickness", "slant")  # concepts measured on every held-out image
DIGIT_GROUPS = {"0-1": (0, 1), "2-3": (2, 3), "4-5": (4, 5), "6-7": (6, 7), "8-9": (8, 9)}
UNNAMED_CHUNKS = 4  # a latent without named slots is cut into this many groups


@dataclass(frozen=True)
class FactoringConfig:
    seeds: int = 3  # probe seeds (random halves) for UFR
    traversal_seeds: int = 5  # seed images per traversal grid
    steps: tuple[float, ...] = tuple(np.linspace(-2, 2, 9).round(3))  # in sd along the principal direction
    sort_k: int = 20  # lowest and highest images in sort-by-activation
    attention_images: int = 8
    batch: int = 500

    def key(self) -> dict:
        return {"seeds": self.seeds, "traversal_seeds": self.traversal_seeds, "steps": list(self.steps),
                "sort_k": self.sort_k, "attention_images": self.attention_images}


def supervised_slots(tasks: list[dict], slots: dict[str, slice]) -> dict[str, str]:
    """concept -> the slot a task supervises it on (tasks as checkpoints record them)."""
    found = {}
    for task in tasks:
        latent = task.get("latent")
        if latent not in slots:
            continue
        if task.get("type") == "ClassificationTask":
            found.setdefault("digit", latent)
        target = (task.get("params") or {}).get("target")
        if task.get("type") == "RegressionTask" and target in MEASURED:
            found.setdefault(target, latent)
    return found


def named_slots(model: nn.Module) -> dict[str, slice]:
    return {name: s for name, s in model.latent_slices.items() if name != "all"}


def _chunks(dim: int, parts: int) -> dict[str, slice]:
    edges = np.linspace(0, dim, min(parts, dim) + 1).round().astype(int)
    return {f"z{a}-{b - 1}": slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])}  # "z0-7": dims 0..7


def _tertiles(values: np.ndarray, name: str) -> ContextFamily:
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return ContextFamily(f"{name} tertile", {f"{name} low": values <= low,
                                             f"{name} mid": (values > low) & (values <= high),
                                             f"{name} high": values > high})


class FactoringEvaluator:
    """Scores models on fixed held-out sets with a fixed digit classifier (for "class kept")."""

    def __init__(self, sets: EvalSets, classifier: DigitClassifier, config: FactoringConfig | None = None) -> None:
        self.sets, self.classifier = sets, classifier
        self.config = config or FactoringConfig()
        self.data, self.source = sets.all()
        self.images = self.data.images.float().div(255)  # [N,1,28,28]
        self.labels = self.data.labels.numpy()
        self.measured = {k: self.data.targets[k].numpy().astype(np.float64) for k in MEASURED}
        natural = np.flatnonzero(self.source == SOURCES.index("natural"))
        # Fixed seed images: the first natural test digit of as many classes as there are seeds.
        firsts = [natural[self.labels[natural] == c][0] for c in range(10) if (self.labels[natural] == c).any()]
        self.seed_index = np.asarray(firsts[:self.config.traversal_seeds])
        self.attention_index = natural[np.linspace(0, len(natural) - 1, self.config.attention_images).astype(int)]

    # ---- the evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, tasks: list[dict] | None = None,
                 progress: Callable[[float, str], None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """(report, figures): figures by name, e.g. "traversal/thickness", "activation/slant", "attention"."""
        progress = progress or (lambda fraction, what: None)
        timing: dict[str, float] = {}
        clock = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            progress(0.0, "encoding")
            codes, attention = self._encode(model)
            timing["encode_s"] = time.perf_counter() - clock

            slots = named_slots(model)
            supervised = supervised_slots(tasks or [], slots)
            if slots:
                rule = "named"
                assignment = {c: supervised.get(c, c) for c in MEASURED if c in slots or c in supervised}
                missing = [c for c in MEASURED if c not in assignment]
            else:
                slots, rule, assignment, missing = _chunks(codes.shape[1], UNNAMED_CHUNKS), "hungarian", None, []
            concepts = [Concept(c, self.measured[c], "continuous") for c in MEASURED if c not in missing]
            if "digit" in supervised:
                concepts.append(Concept("digit", self.labels, "class"))
                if assignment is not None:
                    assignment["digit"] = supervised["digit"]
            contexts = {c.name: self._contexts(c.name) for c in concepts}
            progress(0.2, "UFR")
            clock = time.perf_counter()
            scores = ufr_report(codes, slots, concepts, contexts, assignment=assignment, seeds=self.config.seeds)
            timing["ufr_s"] = time.perf_counter() - clock

            progress(0.4, "MIG and DCI")
            clock = time.perf_counter()
            literature = {"mig": mig(codes, concepts), "dci": dci(codes, concepts)}
            timing["mig_dci_s"] = time.perf_counter() - clock

            progress(0.55, "traversals")
            clock = time.perf_counter()
            assigned = {info["slot"]: name for name, info in scores["concepts"].items()}
            traversal, pictures, parts_missing = self._traversals(model, codes, slots, assigned)
            timing["traversals_s"] = time.perf_counter() - clock

            progress(0.85, "attention")
            if attention is not None:
                pictures["attention"] = figures.attention_overlay(
                    self.images[self.attention_index, 0].numpy(), {k: v[self.attention_index] for k, v in attention.items()})
                attention_report = figures.attention_stats(attention)
            else:
                attention_report = None
                parts_missing.append("attention: the model returns no 'attention' maps")
        finally:
            model.train(was_training)
        notes = list(scores.get("notes", []))
        notes += [f"{c}: no slot of that name and no task supervises it; not scored" for c in missing]
        report = {
            "ufr": scores["ufr"], "ufr_se": scores["ufr_se"],
            "assignment_rule": rule if rule == "hungarian" else scores["assignment_rule"],
            "concepts": scores["concepts"], "slot_info": scores["slot_info"], "traversal": traversal,
            **literature, "attention": attention_report, "parts_missing": parts_missing, "notes": notes,
            "classifier": self.classifier.info, "sets": self.sets.info, "settings": self.config.key(),
            "slots": {name: [s.start, s.stop] for name, s in slots.items()}, "timing": timing,
        }
        progress(1.0, "done")
        return report, pictures

    # ---- parts ---------------------------------------------------------------------------------
    def _encode(self, model: nn.Module) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        device = next(model.parameters()).device
        latents, maps = [], []
        for start in range(0, len(self.images), self.config.batch):
            out = model(self.images[start:start + self.config.batch].to(device))
            latents.append(out["latent"].float().cpu())
            if "attention" in out:
                maps.append({k: v.float().cpu() for k, v in out["attention"].items()})
        codes = torch.cat(latents).numpy().astype(np.float64)
        attention = {k: torch.cat([m[k] for m in maps]).numpy() for k in maps[0]} if maps else None
        return codes, attention

    def _contexts(self, concept: str) -> list[ContextFamily]:
        """Partitions of the held-out data that are not the concept itself (DESIGN §7)."""
        families = []
        if concept != "digit":
            families.append(ContextFamily("digit class", {name: np.isin(self.labels, classes)
                                                           for name, classes in DIGIT_GROUPS.items()}))
        families.append(ContextFamily("source", {name: self.source == i for i, name in enumerate(SOURCES)}))
        families += [_tertiles(self.measured[other], other) for other in MEASURED if other != concept]
        return families

    def _traversals(self, model: nn.Module, codes: np.ndarray, slots: dict[str, slice],
                    assigned: dict[str, str]) -> tuple[dict, dict[str, np.ndarray], list[str]]:
        traversal, pictures, missing = {}, {}, []
        if not hasattr(model, "decode"):
            return traversal, pictures, ["traversals: the model has no decode(latent)"]
        device = next(model.parameters()).device
        steps = np.asarray(self.config.steps)
        captions = [f"t{t:.1f} s{s:+.2f} c{c}" for t, s, c in
                    zip(self.measured["thickness"], self.measured["slant"], self.labels)]
        seed_codes = torch.as_tensor(codes[self.seed_index], dtype=torch.float32, device=device)
        leading = {"input": self.images[self.seed_index, 0].numpy(),
                   "recon": recon_probabilities(model, model.decode(seed_codes)).clamp(0, 1).reshape(-1, 28, 28).cpu().numpy()}
        for name, group in slots.items():
            mean, direction, sd = figures.principal_direction(codes[:, group])
            latents = figures.traversal_latents(codes[self.seed_index], group, mean, direction, sd, steps)
            flat = torch.as_tensor(latents.reshape(-1, codes.shape[1]), dtype=torch.float32, device=device)
            images = recon_probabilities(model, model.decode(flat)).clamp(0, 1).cpu().numpy()
            images = images.reshape(len(self.seed_index), len(steps), 28, 28)
            concept = assigned.get(name)
            pictures[f"traversal/{name}"] = figures.traversal_grid(
                images, steps, f"{name} slot" + (f" (scored as {concept})" if concept else ""), leading=leading)
            if concept in MEASURED:
                traversal[concept] = {"slot": name, **figures.traversal_cleanliness(
                    images, concept, self.labels[self.seed_index], self.classifier.predict),
                    "probe": self._probe_traversal(model, codes, group, concept, steps, device)}
            projection = (codes[:, group] - mean) @ direction
            pictures[f"activation/{name}"] = figures.sort_by_activation(
                self.images[:, 0].numpy(), projection, captions, k=self.config.sort_k)
        return traversal, pictures, missing

    def _probe_traversal(self, model: nn.Module, codes: np.ndarray, group: slice, concept: str,
                         steps: np.ndarray, device: torch.device) -> dict:
        """A diagnosis beside the traversal (never in its place): the same traversal along the
        direction a ridge probe reads the concept in the slot (fitted on the natural test digits),
        from thinner to thicker (or less to more slanted). A slot that holds the concept (a high
        I) whose probe traversal still barely changes it is one the decoder does not read the
        concept from: it takes it from other slots (see L)."""
        natural = self.source == SOURCES.index("natural")
        direction = figures.probe_direction(codes[natural][:, group], self.measured[concept][natural])
        mean = codes[:, group].mean(0)
        sd = float(((codes[:, group] - mean) @ direction).std(ddof=1))
        latents = figures.traversal_latents(codes[self.seed_index], group, mean, direction, sd, steps)
        flat = torch.as_tensor(latents.reshape(-1, codes.shape[1]), dtype=torch.float32, device=device)
        images = recon_probabilities(model, model.decode(flat)).clamp(0, 1).cpu().numpy()
        images = images.reshape(len(self.seed_index), len(steps), 28, 28)
        clean = figures.traversal_cleanliness(images, concept, self.labels[self.seed_index], self.classifier.predict)
        return {key: clean[key] for key in ("rho", "range", "class_kept")}
