"""Text embeddings with sentence-transformers, from local files only. Rows come back normalized,
so inner products are cosine similarities."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import embedder_directory, go_offline
from .torch_setup import pick_device

log = logging.getLogger(__name__)


class Embedder:
    def __init__(
        self, path: Path | None, *, device: str = "cpu", batch_size: int = 64, threads: int = 0
    ) -> None:
        go_offline()
        # Imported after go_offline(): huggingface_hub reads its offline switch once, on first import.
        # And it takes seconds (torch): only a process that loads the embedder pays.
        from sentence_transformers import SentenceTransformer

        started = time.perf_counter()
        directory, self.name = embedder_directory(path)
        self.device = pick_device(device, threads)
        self._model = SentenceTransformer(str(directory), device=self.device, local_files_only=True)
        self.dimension = int(self._model.get_embedding_dimension())
        self._batch_size = batch_size
        log.info(
            "embedder loaded",
            extra={
                "model": self.name,
                "dimension": self.dimension,
                "device": self.device,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
