"""The TFLite runtime layer: which runtime, which delegate, and tensor I/O.

Why one layer: LiteRT (`ai_edge_litert`) and the older `tflite_runtime`
expose the same Interpreter API, and the Edge TPU, external NPU delegates and
the CPU (XNNPACK) differ only in how the interpreter is built. Everything
above this module sees one `Runner` that takes real-valued input and returns
real-valued outputs, whatever the tensors' quantisation.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol

import cv2
import numpy as np

from edge.common import schema
from edge.common.errors import AcceleratorError, ModelError
from edge.common.schema import Kind, setting
from edge.vision import compat

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
DELEGATES = ("auto", "cpu", "edgetpu", "external")
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
# USB ids of the Coral USB Accelerator before and after its firmware is loaded.
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}
CORAL_PCI_GLOB = "apex_*"
DELEGATE_ENTRY_POINT = "tflite_plugin_create_delegate"
# The runtimes' destructor that raises for a delegate whose library never loaded (see `configure_process`).
FAILED_DELEGATE_DESTRUCTOR = "Delegate.__del__"
# A uint8 input whose quantisation maps pixels to within half a step of themselves is fed as is.
HALF_STEP = 0.5 + 1e-6
# The test pattern for `Runner.keeps_input`: values that fit every input type (uint8, int8, float).
INPUT_PATTERN_PERIOD = 101
IDENTITY_GAIN_TOLERANCE = 1e-2
# OpenCV only ever works on model-sized images here, too small to gain from its thread pool,
# whose spinning workers would take CPU from the interpreter's threads (see `configure_process`).
OPENCV_THREADS = 1


@dataclass(frozen=True, slots=True)
class Runtime:
    """The interpreter module that loaded, reported at start-up."""

    name: str
    interpreter: Callable[..., Any]
    load_delegate: Callable[..., Any]


def load_runtime(preference: tuple[str, ...] = RUNTIMES) -> Runtime:
    """LiteRT first (numpy 2), then tflite_runtime (Raspberry Pi OS images with numpy 1.x)."""
    compat.check_runtime_matrix(preference)
    problems = []
    for name in preference:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        return Runtime(name.split(".")[0], module.Interpreter, module.load_delegate)
    raise ModelError(
        "no TFLite runtime could be imported (" + "; ".join(problems) + ")",
        "pip install ai-edge-litert (or tflite-runtime on older Raspberry Pi OS images)",
    )


def _edgetpu_device(device: str) -> str | None:
    kind, _, index = device.partition(":")
    if kind not in ("usb", "pci") or (index and not index.isdigit()):
        return "is not an Edge TPU device"
    return None


EXTERNAL_LIBRARY_EXPECTED = "the path of an external delegate library, e.g. /usr/lib/libvx_delegate.so"


@dataclass(frozen=True, slots=True)
class DelegateConfig(schema.Section):
    """`[detector]` delegate settings: which accelerator, which device, how many CPU threads."""

    SECTION: ClassVar[str] = "detector"

    kind: str = setting("auto", kind=Kind.TEXT, key="delegate", check=schema.one_of(DELEGATES),
                        expected=f"an accelerator: {schema.choices_text(DELEGATES)}")
    device: str | None = setting(None, kind=Kind.TEXT, optional=True, check=_edgetpu_device,
                                 expected="an Edge TPU device: usb, usb:N, pci or pci:N")
    library: str | None = setting(None, kind=Kind.TEXT, key="delegate_library", optional=True, check=schema.not_empty,
                                  expected=EXTERNAL_LIBRARY_EXPECTED)
    options: Mapping[str, str] = setting(kind=Kind.TABLE, key="delegate_options", factory=dict,
                                         expected="a table of the external delegate's options")
    threads: int = setting(1, kind=Kind.WHOLE, check=schema.at_least(1),
                           expected="a whole number of CPU inference threads, at least 1")
    # What `auto` tries before the CPU (the external delegate only when `library` names one); not a setting.
    auto_order: tuple[str, ...] = ("edgetpu", "external")

    def check(self) -> None:
        unknown = set(self.auto_order) - {"edgetpu", "external"}
        if unknown:
            raise ValueError(f"auto_order: unknown accelerators {sorted(unknown)}; expected edgetpu and/or external")
        if self.kind == "external" and not self.library:
            raise schema.refuse(self.SECTION, "delegate_library", self.library,
                                "is not set: the external delegate needs the path of its library",
                                EXTERNAL_LIBRARY_EXPECTED)


def library_problem(library: str) -> str | None:
    """Why a delegate library cannot be used, or None; checked before `load_delegate`.

    LiteRT's Delegate wrapper raises on a missing library and then its
    destructor prints an unrelated traceback; an installer must only see the
    first, plain reason.
    """
    path = library if "/" in library else (ctypes.util.find_library(library.removeprefix("lib").split(".so")[0]) or library)
    try:
        handle = ctypes.CDLL(path)
    except OSError as exc:
        return f"cannot load {library}: {exc}"
    if not hasattr(handle, DELEGATE_ENTRY_POINT):
        return f"{library} is not a TFLite delegate (it has no {DELEGATE_ENTRY_POINT})"
    return None


def edgetpu_devices(sys_root: Path = Path("/")) -> list[str]:
    """Coral devices visible to the kernel, as Edge TPU device names."""
    found = []
    usb = sorted((sys_root / "sys/bus/usb/devices").glob("*/idVendor"))
    usb_index = 0
    for vendor_file in usb:
        try:
            ids = (vendor_file.read_text().strip(), (vendor_file.parent / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB_IDS:
            found.append(f"usb:{usb_index}")
            usb_index += 1
    found += [f"pci:{i}" for i, _ in enumerate(sorted((sys_root / "dev").glob(CORAL_PCI_GLOB)))]
    return found


def edgetpu_library_problem() -> str | None:
    """Why libedgetpu cannot be used here, or None (`EdgeTpuHardware.library_problem`)."""
    return library_problem(EDGETPU_LIBRARY.get(platform.system(), EDGETPU_LIBRARY["Linux"]))


def load_delegate_checked(runtime: Runtime, library: str, options: Mapping[str, str], what: str) -> Any:
    problem = library_problem(library)
    if problem:
        raise AcceleratorError(f"{what} is not available: {problem}", "install its driver, or set delegate = \"cpu\"")
    try:
        return runtime.load_delegate(library, dict(options))
    except (ValueError, OSError, AttributeError, RuntimeError) as exc:
        detail = str(exc).strip() or "the delegate refused to start"
        raise AcceleratorError(f"{what} failed to start: {detail}", "check that the device is plugged in and powered") from None


def edgetpu_delegate(runtime: Runtime, device: str | None) -> Any:
    library = EDGETPU_LIBRARY.get(platform.system(), EDGETPU_LIBRARY["Linux"])
    what = f"the Edge TPU ({library}, device {device or 'any'})"
    compat.check_edgetpu_pairing(runtime.name)
    options = {"device": device} if device else {}
    return load_delegate_checked(runtime, library, options, what)


class AcceleratorFault(AcceleratorError):
    """An accelerator failed while running (a USB Coral reset or unplugged): transient, unlike a CPU fault."""


@dataclass(frozen=True, slots=True)
class TensorCodec:
    """Real value <-> tensor value for one tensor, from its own quantisation parameters."""

    dtype: np.dtype
    scale: float
    zero_point: int

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> "TensorCodec":
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(np.dtype(details["dtype"]), float(scale), int(zero_point))

    @property
    def quantised(self) -> bool:
        return self.dtype.kind in "iu" and self.scale > 0

    def decode(self, raw: np.ndarray) -> np.ndarray:
        if not self.quantised:
            return raw
        return (raw.astype(np.float32) - self.zero_point) * np.float32(self.scale)


@dataclass(frozen=True, slots=True)
class PixelTransform:
    """The affine map from uint8 pixels to the tensor the model wants.

    Folding the model's normalisation and the input tensor's quantisation into
    one multiply-add means a uint8 Edge TPU model whose quantisation undoes
    the normalisation takes the pixels as they are, with no arithmetic.
    """

    gain: float
    offset: float
    dtype: np.dtype

    @classmethod
    def for_input(cls, real_gain: float, real_offset: float, codec: TensorCodec) -> "PixelTransform":
        if not codec.quantised:
            return cls(real_gain, real_offset, codec.dtype)
        return cls(real_gain / codec.scale, real_offset / codec.scale + codec.zero_point, codec.dtype)

    @property
    def identity(self) -> bool:
        """Within half a quantisation step of a plain copy (the Edge TPU BlazeFace is off by exactly 0.5)."""
        return self.dtype == np.uint8 and abs(self.gain - 1.0) < IDENTITY_GAIN_TOLERANCE and abs(self.offset) <= HALF_STEP

    def apply(self, pixels: np.ndarray, out: np.ndarray) -> None:
        if self.identity:
            out[...] = pixels
        elif self.dtype == np.float32:
            # One pass, written straight into `out` (the interpreter's own input buffer).
            cv2.addWeighted(pixels, self.gain, pixels, 0.0, self.offset, dst=out, dtype=cv2.CV_32F)
        elif self.dtype.kind == "f":
            np.multiply(pixels, self.gain, out=out, casting="unsafe")
            out += self.offset
        else:
            info = np.iinfo(self.dtype)
            values = np.rint(pixels.astype(np.float32) * self.gain + self.offset)
            out[...] = np.clip(values, info.min, info.max).astype(self.dtype)


class RunPixels(Protocol):
    """The shape of `Runner.run_pixels`: what a detector calls to run one model input (the runner's
    own method, or one that hands the run to the thread that owns the runner)."""

    def __call__(self, pixels: np.ndarray, transform: PixelTransform, views: bool = False,
                 changed: tuple[slice, slice] | None = None) -> list[np.ndarray]: ...


class Runner:
    """One interpreter on one delegate; real values in, real values out."""

    def __init__(self, interpreter: Any, runtime: Runtime, accelerator: str, model_path: Path) -> None:
        self.interpreter = interpreter
        self.runtime = runtime
        self.accelerator = accelerator
        self.model_path = model_path
        self._input = interpreter.get_input_details()[0]
        self.input_codec = TensorCodec.from_details(self._input)
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        # A view factory onto the interpreter's input buffer: pixels are written in place, no set_tensor copy.
        self._input_view = interpreter.tensor(self._input["index"])
        self._outputs = interpreter.get_output_details()
        self._codecs = [TensorCodec.from_details(d) for d in self._outputs]
        self._output_views = [interpreter.tensor(d["index"]) for d in self._outputs]
        self._float_outputs = not any(codec.quantised for codec in self._codecs)

    def pixel_transform(self, real_gain: float, real_offset: float) -> PixelTransform:
        return PixelTransform.for_input(real_gain, real_offset, self.input_codec)

    def run_pixels(self, pixels: np.ndarray, transform: PixelTransform, views: bool = False,
                   changed: tuple[slice, slice] | None = None) -> list[np.ndarray]:
        """Run on an H x W x 3 uint8 image already at the model's input size.

        With `changed` (rows, cols), only that region differs from the pixels
        of the previous run, so only it is written; pass it only where
        `keeps_input()` said the interpreter keeps its input between invokes.
        With `views`, float outputs are views of the interpreter's own buffers
        (no copy): the caller must drop them before the next run, as LiteRT
        refuses to invoke while its buffers are referenced.
        """
        if changed is None:
            transform.apply(pixels, self._input_view()[0])
        else:
            transform.apply(pixels[changed], self._input_view()[(0, *changed)])
        # The input view is gone by now: LiteRT refuses to invoke while a view of its buffers is alive.
        try:
            self.interpreter.invoke()
        except RuntimeError as exc:
            if self.accelerator == "cpu":
                raise
            raise AcceleratorFault(f"the {self.accelerator} accelerator failed while running: {str(exc).strip()}",
                                   "check the device's cable and power; the service falls back or waits "
                                   "as the delegate setting says") from None
        if views:
            if self._float_outputs:
                return [view() for view in self._output_views]
            return [codec.decode(view()) for view, codec in zip(self._output_views, self._codecs, strict=True)]
        return [codec.decode(self.interpreter.get_tensor(d["index"])) for d, codec in zip(self._outputs, self._codecs, strict=True)]

    def invoke(self) -> None:
        """The bare interpreter call, for benchmarks that compare against it."""
        self.interpreter.invoke()

    def keeps_input(self) -> bool:
        """Whether the input buffer comes out of invoke() as it went in, which writing only
        the changed region of the next frame relies on. LiteRT and tflite_runtime keep it
        (tests and hw-tests check that); a vendor's delegate is taken at its word only after
        this one invoke on a test pattern, run once when a detector is built."""
        count = int(np.prod(self.input_shape))
        pattern = (np.arange(count) % INPUT_PATTERN_PERIOD).reshape(self.input_shape).astype(self.input_codec.dtype)
        self._input_view()[...] = pattern
        self.interpreter.invoke()
        return bool(np.array_equal(self._input_view(), pattern))


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """fd 2 points at /dev/null for the duration (the runtimes print from C++, past `sys.stderr`)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interpreter_build_quieted() -> contextlib.AbstractContextManager[None]:
    """Where `make_interpreter` builds: quiet only when the entry point asked (`configure_process`)."""
    return _native_stderr_silenced() if _PROCESS.quiet_native_logs else contextlib.nullcontext()


def _is_failed_delegate_destructor(unraisable: sys.UnraisableHookArgs) -> bool:
    """The runtimes' `Delegate.__del__` on a delegate whose library never loaded: it raises
    AttributeError for the handle it never got, after the real cause was already reported."""
    target = unraisable.object
    return getattr(target, "__module__", None) in RUNTIMES and getattr(target, "__qualname__", None) == FAILED_DELEGATE_DESTRUCTOR


@dataclass(slots=True)
class _ProcessSettings:
    """What `configure_process` chose for this process (nothing until an entry point calls it)."""

    quiet_native_logs: bool = False
    hook_installed: bool = False


_PROCESS = _ProcessSettings()


def configure_process() -> None:
    """Process-wide settings for a program that runs the models; its entry point calls this once, first.

    Library code changes no process-wide state on its own, so a test, a
    benchmark or an application that imports these modules keeps its own
    stderr, hooks and thread pools. A program that runs the models opts in:

    - OpenCV runs single-threaded (`OPENCV_THREADS`): it only ever works on
      model-sized images here, too small to gain from its thread pool, whose
      spinning workers would take CPU from the interpreter's threads;
    - the runtimes' native INFO lines ("Created TensorFlow Lite XNNPACK
      delegate") are hidden: fd 2 points at /dev/null while an interpreter is
      built; failures still surface, as the Python exceptions this module
      turns into plain errors;
    - the traceback a delegate that failed to load prints from its destructor
      is dropped (noise after the real cause, an `AcceleratorError`); every
      other unraisable exception still reaches the hook that was there.

    Calling it again changes nothing more.
    """
    cv2.setNumThreads(OPENCV_THREADS)
    _PROCESS.quiet_native_logs = True
    if _PROCESS.hook_installed:
        return
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not _is_failed_delegate_destructor(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    _PROCESS.hook_installed = True


def make_interpreter(runtime: Runtime, model_path: Path, delegates: list[Any], threads: int) -> Any:
    try:
        with _interpreter_build_quieted():
            interpreter = runtime.interpreter(model_path=str(model_path), experimental_delegates=delegates or None,
                                              num_threads=threads)
            interpreter.allocate_tensors()
        return interpreter
    except (ValueError, RuntimeError) as exc:
        if "edgetpu" in str(exc).lower() and not delegates:
            raise ModelError(
                f"{model_path.name} is compiled for the Edge TPU and cannot run on the CPU",
                "use the model's cpu build, or set delegate = \"edgetpu\" on a device with a Coral",
            ) from None
        raise ModelError(f"model {model_path} could not be loaded: {str(exc).strip()}") from None


def cpu_runner(runtime: Runtime, model_path: Path, threads: int) -> Runner:
    return Runner(make_interpreter(runtime, model_path, [], threads), runtime, "cpu", model_path)


def accelerated_runner(runtime: Runtime, model_path: Path, delegate: Any, accelerator: str, threads: int) -> Runner:
    return Runner(make_interpreter(runtime, model_path, [delegate], threads), runtime, accelerator, model_path)


def open_edgetpu_runner(runtime: Runtime, model_path: Path, device: str | None, threads: int) -> Runner:
    """The real Edge TPU: load libedgetpu's delegate for `device`, build the interpreter on it."""
    return accelerated_runner(runtime, model_path, edgetpu_delegate(runtime, device), "edgetpu", threads)


@dataclass(frozen=True, slots=True)
class EdgeTpuHardware:
    """The Coral as the pipeline sees it, in three calls: the hardware boundary.

    Why a seam: there is no Coral where the tests run, so they replace these
    three calls and nothing else; everything above them (when to look, what
    to build, when to swap, what to report) is the code the device runs.
    """

    devices: Callable[[], list[str]] = edgetpu_devices
    library_problem: Callable[[], str | None] = edgetpu_library_problem
    open_runner: Callable[[Runtime, Path, str | None, int], Runner] = open_edgetpu_runner


EDGETPU = EdgeTpuHardware()
