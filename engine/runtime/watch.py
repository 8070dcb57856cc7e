"""The gateway's watch on Ray itself: a `serve` process that has lost Ray's control store stops,
instead of keeping a port that accepts connections and answers nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ray.experimental.internal_kv import _internal_kv_get

log = logging.getLogger(__name__)


class RayWatch:
    """Probes Ray's control store from a thread every `interval_s`. When no probe has succeeded
    for `lost_after_s`, calls `on_lost` once: the gateway stops, instead of keeping a port that
    accepts connections and answers nothing."""

    def __init__(
        self, on_lost: Callable[[], None], interval_s: float = 2.0, lost_after_s: float = 10.0
    ) -> None:
        self._on_lost = on_lost
        self._interval_s = interval_s
        self._lost_after_s = lost_after_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="ray-watch", daemon=True)

    def start(self) -> RayWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last_ok = time.monotonic()
        probe: threading.Thread | None = None
        answered = threading.Event()
        while not self._stop.wait(self._interval_s):
            if probe is None or not probe.is_alive():
                if answered.is_set():
                    last_ok = time.monotonic()
                answered = threading.Event()
                probe = threading.Thread(target=_probe, args=(answered,), daemon=True)
                probe.start()
                probe.join(self._interval_s)
                if answered.is_set():
                    last_ok = time.monotonic()
            if time.monotonic() - last_ok > self._lost_after_s:
                self.lost = True
                log.error("lost the Ray cluster (its control store does not answer); stopping this gateway")
                self._on_lost()
                return


def _probe(answered: threading.Event) -> None:
    try:
        _internal_kv_get("session-engine-probe", namespace="session-engine")
    except Exception:  # noqa: BLE001 - any failure is "no answer"
        return
    answered.set()
