"""What every result is stamped with: the machine, the versions, and the engine config it ran under."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from engine.config import load_config

PACKAGES = (
    "session-engine",
    "ray",
    "fastapi",
    "uvicorn",
    "pydantic",
    "orjson",
    "faiss-cpu",
    "torch",
    "transformers",
)


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown CPU",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def describe(m: dict[str, Any]) -> str:
    return f"{m['cores']} cores, {m['memory_gib']:.0f} GiB, {m['cpu']}, {m['os']}"


def versions(wrk: str | None) -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if wrk:
        # `wrk -v` prints its version and exits 1.
        shown = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
        out["wrk"] = shown.split("[")[0].removeprefix("wrk").strip() or "unknown"
    return out


def engine_config(env: dict[str, str]) -> dict[str, Any]:
    """The engine's resolved config under these environment overrides (keys are never included)."""
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        config = load_config(None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    shown = config.model_dump(mode="json", exclude={"api_keys"})
    return {
        k: shown[k] for k in ("workers", "shards", "outbox", "durability", "memory", "models") if k in shown
    }
