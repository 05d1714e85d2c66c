"""The engine's data: for each dataset a task trains on, a batch stream and a validation split,
loaded when a task first needs it; and the seeds that make a run repeat exactly.

A mixin of `Engine` (acc/engine/trainer.py). Every seed derives from (the configured seed, what
it seeds, the step), so runs repeat exactly: a run continued from a checkpoint draws the same
batches as the run that saved it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from acc.catalog import load_dataset
from acc.datasets import BatchStream, Dataset


@dataclass
class DataSource:
    stream: BatchStream
    validation: Dataset


class DataStreams:
    """Load, seed and reseed the engine's data; see the module docstring."""

    def _data(self, name: str) -> DataSource:
        if name not in self.data:
            dataset = load_dataset(name, self.workspace.data_dirs, self.workspace.mnist_dir)
            train, validation = dataset.split(self.config.val_fraction, self.config.seed)
            stream = BatchStream(train, self.config.batch_size, self._seed_for(self._stream_name(name)), self.device)
            self.data[name] = DataSource(stream, validation)
        return self.data[name]

    def _seed_for(self, what: str) -> int:
        """A stable seed per dataset stream or task head, so runs repeat exactly."""
        return self.config.seed + zlib.crc32(f"{what}@{self.step}".encode())

    def _reset_streams(self) -> None:
        """Reseed every data stream from (seed, dataset, step): a run continued from a checkpoint
        then draws the same batches as the run that saved it."""
        for name, source in self.data.items():
            source.stream = BatchStream(source.stream.data, self.config.batch_size,
                                        self._seed_for(self._stream_name(name)), self.device)
