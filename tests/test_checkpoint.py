"""Checkpoints: identical round trip, atomic writes, no unpickling, clear failures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from acc.engine.checkpoint import read_checkpoint
from acc.engine.session import Session


def _trained(session, steps=15):
    engine = session.engine
    engine.add_task("ReconstructionTask")
    engine.add_task("ClassificationTask", name="digit", latent="digit", weight=0.5)
    engine.train(steps, timeout=120)
    return engine


def _outputs(engine, images):
    with torch.no_grad():
        out = engine.model(images)
        digit = engine.tasks["digit"].task
        return out["recon"], digit.head(digit.features(out))


def test_round_trip_restores_identical_outputs_and_optimizer(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _trained(session)
        engine.update_task("digit", enabled=False)
        checkpoint = engine.save_checkpoint("after-15")
        images = session.engine.data["mnist"].validation.batch(torch.arange(8))["image"]
        recon, logits = _outputs(engine, images)
        optimizer = {k: v.clone() for k, v in engine.optimizer.state[engine.model.encoder[0].weight].items()}
        engine.train(5)  # move on, so that loading has something to undo

    tiny_config.seed = 123  # a different initialisation: everything must come from the checkpoint
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        state = session.engine.load_checkpoint("after-15")
        engine = session.engine
        assert state["step"] == 15 and state["parent_checkpoint"] == checkpoint["id"]
        assert {t["name"]: t["enabled"] for t in state["tasks"]} == {"reconstruction_task": True, "digit": False}
        assert [t["weight"] for t in state["tasks"]] == [1.0, 0.5]
        recon2, logits2 = _outputs(engine, images)
        assert torch.equal(recon, recon2) and torch.equal(logits, logits2)
        restored = engine.optimizer.state[engine.model.encoder[0].weight]
        assert set(restored) == set(optimizer)
        assert all(torch.equal(restored[k], optimizer[k]) for k in optimizer)
        engine.update_task("digit", enabled=True)
        engine.train(3)
        child = engine.save_checkpoint()
        assert child["parent"] == checkpoint["id"] and child["step"] == 18
        names = [row["name"] for row in session.store.checkpoints()]
        assert names == ["after-15", "step-18"]


def test_a_crash_while_writing_leaves_the_previous_checkpoint_loadable(workspace, tiny_config):
    script = textwrap.dedent(f"""
        import os
        import acc.engine.checkpoint as ckpt
        from acc.engine import EngineConfig
        from acc.engine.session import Session
        config = EngineConfig(**{tiny_config.__dict__!r})
        session = Session.open({str(workspace.root)!r}, config, watch=False)
        session.engine.add_task("ReconstructionTask")
        session.engine.train(5)
        session.engine.save_checkpoint("good")
        session.store.flush()
        def dying_rename(src, dst):
            os._exit(3)  # the process dies with the files written and nothing renamed
        ckpt.os.rename = dying_rename
        session.engine.train(5)
        session.engine.save_checkpoint("doomed")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert list(workspace.checkpoints_dir.glob(".tmp-*")), "the crash should have left a partial folder"

    with Session.open(workspace.root, tiny_config, watch=False) as session:
        assert [row["name"] for row in session.store.checkpoints()] == ["good"]
        assert not list(workspace.checkpoints_dir.glob(".tmp-*"))  # cleaned at start-up
        assert session.engine.load_checkpoint("good")["step"] == 5


def test_loading_fails_clearly_and_changes_nothing(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _trained(session, steps=3)
        row = engine.save_checkpoint("c")
        engine.train(2)
        before = engine.state()
        with pytest.raises(KeyError):
            engine.load_checkpoint("no-such-checkpoint")

        path = session.store.checkpoint(row["id"])["path"]
        (workspace.checkpoints_dir / row["id"] / "weights.safetensors").write_bytes(b"\x80\x04 not a tensor file")
        with pytest.raises(ValueError, match="corrupted"):  # its recorded sha256 no longer matches
            engine.load_checkpoint(row["id"])
        assert engine.state() == before
        with pytest.raises(ValueError):
            read_checkpoint(path)


def test_a_checkpoint_needing_an_unknown_task_type_is_refused(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _trained(session, steps=2)
        row = engine.save_checkpoint("c")
        meta_path = workspace.checkpoints_dir / row["id"] / "meta.json"
        meta_path.write_text(meta_path.read_text().replace('"ClassificationTask"', '"VanishedTask"'))
        before = engine.state()
        with pytest.raises(ValueError, match="VanishedTask"):
            engine.load_checkpoint(row["id"])
        assert engine.state() == before


def test_a_flipped_byte_inside_a_tensor_is_refused_naming_the_file(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _trained(session, steps=3)
        row = engine.save_checkpoint("c")
        engine.train(2)
        before = engine.state()
        weights = workspace.checkpoints_dir / row["id"] / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        header = int.from_bytes(data[:8], "little")
        data[8 + header + 100] ^= 0xFF  # a value inside the first tensor; the header stays valid
        weights.write_bytes(bytes(data))
        assert set(safetensors.torch.load(bytes(data))) == set(safetensors.torch.load_file(str(weights)))
        with pytest.raises(ValueError, match="corrupted") as refused:
            engine.load_checkpoint(row["id"])
        assert str(weights) in str(refused.value)
        assert engine.state() == before  # nothing was loaded

        truncated = engine.save_checkpoint("t")
        optimizer = workspace.checkpoints_dir / truncated["id"] / "optimizer.safetensors"
        optimizer.write_bytes(optimizer.read_bytes()[:-10])
        with pytest.raises(ValueError, match="corrupted"):
            engine.load_checkpoint(truncated["id"])


def test_checkpoints_written_before_digests_still_load(workspace, tiny_config):
    with Session.open(workspace.root, tiny_config, watch=False) as session:
        engine = _trained(session, steps=2)
        row = engine.save_checkpoint("old")
        meta_path = workspace.checkpoints_dir / row["id"] / "meta.json"
        meta = json.loads(meta_path.read_text())
        del meta["digests"]
        meta_path.write_text(json.dumps(meta))
        assert engine.load_checkpoint(row["id"])["step"] == 2
