"""A Coral that comes and goes, for tests: real interpreters and models, a fake only at the hardware boundary.

There is no Coral here, so `EdgeTpuHardware`'s three calls are replaced: a
device list the test controls, a library check, and an "Edge TPU runner" that
is the real interpreter running the model's CPU build, labelled edgetpu, whose
invoke() fails like libedgetpu's when the test unplugs the device.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.common.errors import AcceleratorError
from edge.vision.accelerators import FollowingPipeline
from edge.vision.manifest import load_manifest, locate, search_dirs
from edge.vision.pipeline import DetectorConfig
from edge.vision.runtime import DelegateConfig, EdgeTpuHardware, Runner, Runtime, load_runtime, make_interpreter

FAST_POLL_S = 0.05


class Unplugged(RuntimeError):
    """What the runtimes raise when a delegate's invoke fails."""


class FlakyInterpreter:
    """A real interpreter whose invoke() fails while the fake Coral is unplugged."""

    def __init__(self, real: Any, coral: "FakeCoral") -> None:
        self._real, self._coral = real, coral

    def invoke(self) -> None:
        if not self._coral.plugged:
            raise Unplugged("Node number 0 (EdgeTpuDelegateForCustomOp) failed to invoke.")
        self._real.invoke()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@dataclass
class FakeCoral:
    """The hardware boundary: whether a Coral is attached, and a runner that stops working when it is not."""

    plugged: bool = False
    library: str | None = None  # why libedgetpu cannot load, or None
    refuse_open: str | None = None  # the delegate refuses to start, though the device is listed
    looks: int = 0
    opened: list[Path] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def devices(self) -> list[str]:
        with self.lock:
            self.looks += 1
        return ["usb:0"] if self.plugged else []

    def library_problem(self) -> str | None:
        return self.library

    def open_runner(self, runtime: Runtime, model_path: Path, device: str | None, threads: int) -> Runner:
        if self.refuse_open:
            raise AcceleratorError(f"the Edge TPU failed to start: {self.refuse_open}")
        self.opened.append(model_path)
        # The Edge TPU build runs only on a Coral: the same model's CPU build stands in for it.
        spec = load_manifest().get("blazeface-short")
        cpu_path = locate(spec.variant("cpu"), spec.name, search_dirs())
        return Runner(FlakyInterpreter(make_interpreter(runtime, cpu_path, [], threads), self), runtime,
                      "edgetpu", model_path)

    def hardware(self) -> EdgeTpuHardware:
        return EdgeTpuHardware(self.devices, self.library_problem, self.open_runner)


def following(coral: FakeCoral, shared_models: Path, poll_s: float = FAST_POLL_S, **delegate: Any) -> FollowingPipeline:
    model = "blazeface-short" if delegate.get("kind") == "edgetpu" else "blazeface-full"
    config = DetectorConfig(model=model, pose="off", delegate=DelegateConfig(**delegate),
                            model_dirs=(shared_models,))
    return FollowingPipeline(config, load_manifest(), load_runtime(), coral.hardware(),
                             poll_s=poll_s, wait_min_s=FAST_POLL_S, wait_max_s=4 * FAST_POLL_S)
