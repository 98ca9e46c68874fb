"""The runtime matrix: which TFLite runtime runs with which numpy, and which libedgetpu with which runtime.

Why a check of its own: a wrong pairing does not fail with an error that
names it. tflite-runtime (built against numpy 1.x) imports under numpy 2, and
then building an interpreter prints a page about NumPy 1.x modules and
raises SystemError (`_ARRAY_API not found`); Google's libedgetpu 16.0 (built
against TF Lite 2.5) loaded into TF Lite 2.12 or newer crashes the process
with a segmentation fault, which no `except` can turn into a message. So the
pairings are checked from the installed versions before the runtime is
imported and before the Edge TPU delegate is loaded, and a bad one stops with
a message that says what is installed and what to install instead
(docs/package.md has the whole matrix).

The decisions are plain functions over version strings and the text of
dpkg's status file; the two `check_*` functions read the installation and
raise. Only the standard library is imported at module level, so the package's
postinst can run `python -m edge.vision.compat` in a new virtual environment
without OpenCV.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.common.errors import AcceleratorError, ModelError

# Import name (as in runtime.RUNTIMES, without `.interpreter`) -> distribution name on PyPI.
RUNTIME_DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
# tflite-runtime's wheels (the last release is 2.14.0) are built against numpy 1.x and do not import under 2.x.
TFLITE_RUNTIME_NUMPY_BELOW = (2,)
# Both runtimes declare numpy>=1.23.2 (Requires-Dist); Raspberry Pi OS Bookworm has 1.24.2.
RUNTIME_NUMPY_AT_LEAST = (1, 23, 2)
# Google's libedgetpu (16.0 and older, built against TF Lite 2.5) crashes in TF Lite 2.12 and newer
# (google-coral/edgetpu#812): the last runtime it works with is 2.11.
OFFICIAL_EDGETPU_LAST_TF = (2, 11)
# feranick's maintained builds carry the TensorFlow version they were built against in their Debian
# version, e.g. 16.0tf2.13.1-2. Its maintainer reports the TF 2.13.1 build working with tflite_runtime
# 2.13.1, 2.14.1 and 2.15.0: a build serves runtimes from its own TF minor version up to this many newer.
TF_BUILD_SPAN = 2
EDGETPU_TF_TAG = re.compile(r"tf(\d+)\.(\d+)")
# The Debian packages that install libedgetpu.so.1 (standard and maximum clock).
EDGETPU_PACKAGES = ("libedgetpu1-std", "libedgetpu1-max")
DPKG_STATUS = Path("/var/lib/dpkg/status")
MAINTAINED_EDGETPU = "https://github.com/feranick/libedgetpu/releases"
MATRIX_DOC = "docs/package.md (the runtime matrix)"
# The bundled models (package data; edge/vision/models links to models/ in a checkout).
MODELS = Path(__file__).resolve().parent / "models"


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: '2.14.0' -> (2, 14, 0), '2.1.0.post1' -> (2, 1, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a version (expected digits and dots, e.g. 2.14.0)")
    return tuple(int(part) for part in match.group().split("."))


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in release)


def runtime_numpy_problem(runtime: str, runtime_version: str, numpy_version: str) -> str | None:
    """Why this runtime cannot run with this numpy, or None when the pairing works."""
    distribution = RUNTIME_DISTRIBUTIONS.get(runtime, runtime)
    numpy_release = version_tuple(numpy_version)
    if numpy_release < RUNTIME_NUMPY_AT_LEAST:
        return (f"{distribution} {runtime_version} needs numpy {_dotted(RUNTIME_NUMPY_AT_LEAST)} or newer, "
                f"and this system has numpy {numpy_version}")
    if runtime == "tflite_runtime" and numpy_release[:1] >= TFLITE_RUNTIME_NUMPY_BELOW:
        return (f"tflite-runtime {runtime_version} was built for numpy 1.x and cannot run with numpy {numpy_version}: "
                f"with numpy 2 use ai-edge-litert")
    return None


def edgetpu_build_tf(package_version: str) -> tuple[int, int] | None:
    """The TensorFlow version a libedgetpu package was built against (feranick's builds), or None (Google's)."""
    match = EDGETPU_TF_TAG.search(package_version.lower())
    return (int(match.group(1)), int(match.group(2))) if match else None


def edgetpu_pairing_problem(runtime: str, runtime_version: str, package: str, package_version: str) -> str | None:
    """Why this libedgetpu would crash in this runtime, or None when the pairing is known to work or cannot be told.

    ai-edge-litert's version does not say which TF Lite it carries, so only
    Google's build (which crashes in every TF Lite since 2.12, and LiteRT came
    after that) is refused with it.
    """
    built_for = edgetpu_build_tf(package_version)
    distribution = RUNTIME_DISTRIBUTIONS.get(runtime, runtime)
    if built_for is None:
        if runtime == "tflite_runtime" and version_tuple(runtime_version)[:2] <= OFFICIAL_EDGETPU_LAST_TF:
            return None
        return (f"{package} {package_version} is Google's build of libedgetpu, made for TF Lite 2.5: it crashes "
                f"{distribution} {runtime_version} (every TF Lite since 2.12). Install a maintained build made "
                f"for this runtime ({MAINTAINED_EDGETPU})")
    if runtime != "tflite_runtime":
        return None
    release = version_tuple(runtime_version)[:2]
    if release[0] == built_for[0] and built_for[1] <= release[1] <= built_for[1] + TF_BUILD_SPAN:
        return None
    return (f"{package} {package_version} was built against TF {built_for[0]}.{built_for[1]}, which does not serve "
            f"tflite-runtime {runtime_version}. Install the build for TF {release[0]}.{release[1]} or the nearest "
            f"older one ({MAINTAINED_EDGETPU})")


def installed_package(status_text: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of `names` that dpkg's status file lists as installed, with its version."""
    for stanza in status_text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Package") in names and fields.get("Status", "").endswith(" installed"):
            return fields["Package"], fields.get("Version", "")
    return None


@dataclass(frozen=True, slots=True)
class InstalledRuntime:
    """A runtime's import name and its installed distribution's version."""

    name: str
    version: str


def installed_runtime(preference: tuple[str, ...]) -> InstalledRuntime | None:
    """The first runtime of `preference` (module paths, as in runtime.RUNTIMES) that is installed."""
    for module in preference:
        name = module.split(".")[0]
        distribution = RUNTIME_DISTRIBUTIONS.get(name)
        if distribution is None or importlib.util.find_spec(name) is None:
            continue
        try:
            return InstalledRuntime(name, importlib.metadata.version(distribution))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def numpy_version() -> str | None:
    """numpy's version without importing anything else; None when numpy is absent."""
    if importlib.util.find_spec("numpy") is None:
        return None
    import numpy  # the runtimes import it anyway; importing it here costs nothing more

    return str(numpy.__version__)


def check_runtime_matrix(preference: tuple[str, ...]) -> None:
    """Refuse, with what to install instead, a runtime that cannot run with this system's numpy."""
    runtime = installed_runtime(preference)
    installed_numpy = numpy_version()
    if runtime is None or installed_numpy is None:
        return  # the import that follows reports what is missing
    problem = runtime_numpy_problem(runtime.name, runtime.version, installed_numpy)
    if problem:
        raise ModelError(f"the TFLite runtime cannot run here: {problem}",
                         f"install the runtime that goes with this numpy; see {MATRIX_DOC}")


def check_edgetpu_pairing(runtime: str, status_file: Path | None = None) -> None:
    """Refuse a libedgetpu (installed as a Debian package) that would crash this runtime.

    A libedgetpu copied in by hand has no version to read: it is loaded as it is.
    `status_file` defaults to dpkg's (`DPKG_STATUS`, read when called).
    """
    distribution = RUNTIME_DISTRIBUTIONS.get(runtime)
    try:
        status_text = (status_file or DPKG_STATUS).read_text(encoding="utf-8", errors="replace")
        version = importlib.metadata.version(distribution) if distribution else None
    except (OSError, importlib.metadata.PackageNotFoundError):
        return
    package = installed_package(status_text, EDGETPU_PACKAGES)
    if package is None or version is None:
        return
    problem = edgetpu_pairing_problem(runtime, version, *package)
    if problem:
        raise AcceleratorError(f"the Edge TPU library does not match the TFLite runtime: {problem}",
                               f"see {MATRIX_DOC}; until then set delegate = \"cpu\"")


# The preference order of runtime.RUNTIMES (LiteRT first), for `main`, which must not import runtime (it
# imports OpenCV); tests/unit/test_compat.py checks that the two agree.
PREFERENCE = tuple(f"{name}.interpreter" for name in RUNTIME_DISTRIBUTIONS)


def report(preference: tuple[str, ...]) -> str:
    """One line naming the runtime and numpy this environment would use, after checking and importing them."""
    check_runtime_matrix(preference)
    runtime = installed_runtime(preference)
    if runtime is None:
        raise ModelError("no TFLite runtime is installed", f"install ai-edge-litert or tflite-runtime; see {MATRIX_DOC}")
    named = f"{RUNTIME_DISTRIBUTIONS[runtime.name]} {runtime.version}"
    try:
        module = importlib.import_module(f"{runtime.name}.interpreter")
    except ImportError as exc:
        raise ModelError(f"{named} is installed but does not import: {exc}", f"see {MATRIX_DOC}") from None
    # Importing is not enough (tflite-runtime imports under numpy 2 and fails on its first interpreter):
    # one bundled model is loaded and run once.
    model = next(iter(sorted(MODELS.glob("*.tflite"))), None)
    if model is not None:
        try:
            interpreter = module.Interpreter(model_path=str(model))
            interpreter.allocate_tensors()
            interpreter.invoke()
        except Exception as exc:  # noqa: BLE001 - whatever the native runtime raises, it is this one verdict
            raise ModelError(f"{named} cannot run {model.name} here: {type(exc).__name__}: {exc}",
                             f"see {MATRIX_DOC}") from None
    return f"{named} with numpy {numpy_version()}" + (f", ran {model.name}" if model else "")


def main() -> int:
    """`python -m edge.vision.compat`: the package's postinst checks a new environment with it before using it."""
    try:
        print(f"edge-camera runtime: {report(PREFERENCE)}")
    except ModelError as exc:
        print(f"edge-camera runtime: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
