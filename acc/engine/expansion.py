"""The engine's model-expansion command (M6): grow the live model by a layer without starting over.

A mixin of `Engine` (acc/engine/trainer.py), applied between steps like every command. The new
model comes from `acc.models.expand` (existing weights copied, the new layer initialised as asked);
the tasks keep their heads (latent slices do not change), Adam keeps the state of every existing
parameter under its new name (moments and step count) and starts fresh for the new ones. The
expanded model is saved at once as a child of the node the trainer was on (unsaved training is
first kept as "autosave before expand ..."), and training continues in a new run from it (if it
was running, it keeps running), so the curves show where the model grew.
"""

from __future__ import annotations

import torch

from acc.models.expand import ExpansionError, expand, parameter_count


class ExpansionCommands:
    """`expand` and the model's layers and places to grow; see the module docstring."""

    # ---- public, thread-safe ---------------------------------------------------------------------
    def expand(self, where: str, init: str = "identity", seed: int | None = None) -> dict:
        """Grow the model by a layer at `where` (one of `model_layers()["points"]`), initialised
        `init` ("identity": the same function; "random": PyTorch's default). Saves the expanded model
        as a child checkpoint and continues in a new run; returns {"state", "checkpoint",
        "autosaved"}. ValueError (ExpansionError) for an unknown place or init: nothing changes."""
        return self.call("expand", where=where, init=init, seed=seed)

    def model_layers(self) -> dict:
        """The live model's layers, the places it can grow and its parameter count. Read without
        waiting for the training thread (the model's structure changes only by replacing it)."""
        model = self.model
        if not callable(getattr(model, "expansion_points", None)):
            return {"points": [], "params": parameter_count(model), "layers": [],
                    "model": model.config()}
        return {"points": model.expansion_points(), "params": parameter_count(model),
                "layers": model.layers(), "model": model.config()}

    # ---- commands ----------------------------------------------------------------------------
    def _do_expand(self, where: str, init: str, seed: int | None) -> dict:
        seed = self._seed_for(f"expand:{where}") if seed is None else seed
        model, renamed = expand(self.model, where, init, seed)  # the live model is untouched until install
        for active in self.tasks.values():  # heads stay bound: their latent slices must not move
            task = active.task
            if model.latent_slices.get(task.latent) != getattr(task, "slice", None):
                raise ExpansionError(f"expanding at {where!r} would move latent {task.latent!r} of task {task.name!r}")
        model = self._prepare_model(model)
        optimizer = self._carry_optimizer(model, renamed)
        before, after = parameter_count(self.model), parameter_count(model)

        # Named after the node the trainer was on, or its step when it trained past it (then that
        # training is first kept as "autosave before expand ...", the parent of the grown model).
        on = self.store.checkpoint(self.parent_checkpoint) if self.parent_checkpoint else None
        base = on["name"] if on is not None and self.step == self._saved_step else f"step-{self.step}"
        autosaved = self._do_autosave_before(f"expand at {where}")
        parent = self.store.checkpoint(self.parent_checkpoint) if self.parent_checkpoint else None
        with self._lock:
            self.model, self.optimizer = model, optimizer
        self.last_eval, self.last_eval_step = {}, None
        expansion = {"where": where, "init": init, "seed": seed, "params_before": before, "params_after": after,
                     "from": parent["id"] if parent else None, "step": self.step}
        checkpoint = self._do_save_checkpoint(f"{base} +{where} ({init})", None, {"expansion": expansion})
        checkpoint["expansion"] = expansion
        # Training that was under way goes on, in the new run (its old one ends as finished).
        self.run_id = self._new_run(f"{self.store.run(self.run_id)['name']}+{where}", ended="finished",
                                    from_checkpoint=checkpoint["id"], expansion=expansion)
        self._event("expanded", f"model expanded at {where} ({init}): {before:,} -> {after:,} parameters",
                    checkpoint=checkpoint["id"], **expansion)
        return {"state": self.state(), "checkpoint": checkpoint, "autosaved": autosaved}

    # ---- helpers -----------------------------------------------------------------------------
    def _carry_optimizer(self, model: torch.nn.Module, renamed: dict[str, str]) -> torch.optim.Optimizer:
        """A new Adam over the expanded model and the task heads: each existing parameter keeps its
        state (found by its new name), a new parameter has none (Adam starts it at step 0)."""
        optimizer = self._new_optimizer(model, list(self.tasks.values()))
        lr = {group.get("name"): group["lr"] for group in self.optimizer.param_groups}
        for group in optimizer.param_groups:
            group["lr"] = lr.get(group.get("name"), self.optimizer.param_groups[0]["lr"])
        new_params = dict(model.named_parameters())
        old_names = {p: n for n, p in self.model.named_parameters()}
        for param, state in self.optimizer.state.items():
            if param in old_names:
                optimizer.state[new_params[renamed[old_names[param]]]] = state
            else:  # a task head's parameter: the same object in both optimizers
                optimizer.state[param] = state
        return optimizer
