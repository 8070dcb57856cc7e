"""Device choice and thread count for a process that hosts a model."""

from __future__ import annotations


def pick_device(device: str, threads: int = 0) -> str:
    """`auto` means CUDA when there is a GPU, else the CPU. `threads` > 0 caps torch's CPU threads."""
    # torch takes seconds to import, and this module comes with engine.models.summarizer, which
    # processes that never load a model import for its types: only one that loads a model pays
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
