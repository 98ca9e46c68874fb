"""`edge-camera`: the device's command line.

Speaks plainly to installers: what happened, what to do next, and a
documented exit code (see README). Only anonymised observations are ever
printed about a face.

Why the imports are inside the commands: `edge-camera policy` and `audit
verify` must start without loading numpy, OpenCV or the vision stack, so this
module names every command and its options itself and imports a command's
module only when that command runs. Flag values are checked by the same
declarations as the configuration file (`edge.common.schema`); an error names
the flag.

Exit codes (as the README lists them): 0 done; 1 failed; 2 bad usage or
configuration; 3 model problem; 4 accelerator absent or failed; 5 an input
could not be read; 6 certificate, grant or device-key problem; 7 the audit log
cannot be written or was altered; 8 identification refused or a gallery rule
broken; 78 a permanent error under `run`, which systemd does not restart; 130
interrupted. 78 is sysexits' EX_CONFIG (`EXIT_CONFIG`): a restart cannot fix a
refused configuration or a damaged model (`run --help` lists its codes).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

from edge.app.config import DEFAULT_CONFIG
from edge.app.version import firmware_version
from edge.common import schema
from edge.common.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EdgeError, InputError, is_permanent, run_handler
from edge.common.schema import Kind
from edge.common.stats import percentile

if TYPE_CHECKING:
    import numpy as np

    from edge.vision.pipeline import DetectorConfig, Pipeline
    from edge.wire.observation import Observation

SAMPLE_PORTRAIT = "astronaut.png"
BENCH_FRAME = (640, 480)
BENCH_FRAMES = 200
BENCH_WARMUP = 20
PERCENTILE_HIGH = 90
DEFAULT_DEMO_SECONDS = 10.0
# `--flag`: the `[detector]` key it sets (the same declaration checks both).
DETECTOR_FLAGS = {"--model": "model", "--delegate": "delegate", "--device": "device",
                  "--delegate-library": "delegate_library", "--threads": "threads", "--pose": "pose",
                  "--tiled": "tiled", "--threshold": "score_threshold", "--model-dir": "model_dirs"}


def _detector_options(parser: argparse.ArgumentParser) -> None:
    """The `[detector]` settings as flags, described by their declarations; unset flags keep the defaults."""
    from edge.vision.pipeline import DetectorConfig

    for flag, key in DETECTOR_FLAGS.items():
        text = schema.describe(DetectorConfig, key).replace("%", "%%")
        if flag == "--tiled":
            parser.add_argument(flag, action="store_true", default=None, help=text)
        elif flag == "--model-dir":
            parser.add_argument(flag, action="append", metavar="DIR", help=text)
        else:
            parser.add_argument(flag, metavar=key.split("_")[-1].upper(), help=text)


class _Deferred(argparse.ArgumentParser):
    """A subcommand whose options are added only when it is the one being parsed.

    Why: the detection options are described by the `[detector]` declarations,
    which live with the vision stack; `edge-camera policy` must not import it.
    """

    def __init__(self, *args: Any, options: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._options = options

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._options is not None:
            options, self._options = self._options, None
            options(self)
        return super().parse_known_args(args, namespace)


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    """The `[detector]` section from the flags, by the section's own declarations."""
    from edge.vision.pipeline import DetectorConfig

    given = {key: (flag, getattr(args, flag[2:].replace("-", "_"))) for flag, key in DETECTOR_FLAGS.items()}
    return schema.read_flags(DetectorConfig, given)


# OpenCV's own ceiling on the pixels it decodes: the backstop for formats whose header
# `edge.sources.image_size` does not read (an image over it fails to decode instead of eating the memory).
OPENCV_PIXEL_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"
EXIT_CODES = f"""exit codes: 0 done; 1 failed; 2 bad usage or configuration; 3 model problem; 4 accelerator absent
or failed; 5 an input could not be read; 6 certificate, grant or device-key problem; 7 the audit log
cannot be written or was altered; 8 identification refused or a gallery rule broken; {EXIT_CONFIG} (run) a
permanent error; {EXIT_INTERRUPTED} interrupted"""
RUN_EPILOG = f"""exit codes of run:
  0    stopped: SIGTERM, --seconds/--frames, or a file, folder or video source reached its end
       (logged as event=source-ended; systemd leaves the service stopped)
  1-8  a failure a new process may get past (see `edge-camera --help`): systemd restarts it
  {EXIT_CONFIG}   permanent: the configuration is refused, or the model is unreadable or tampered with;
       systemd does not restart (RestartPreventExitStatus={EXIT_CONFIG}): correct it, then restart
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
a camera or broker that is absent or fails is retried inside the service, with backoff; SIGHUP
re-reads the configuration ([health] interval_s and the device certificate live; other keys
at the next restart, as the log says), the CRL, and re-runs the policy gate."""


def _configure_for_models(log_format: str = "human") -> None:
    """Process-wide settings for the commands that run models (see `configure_process`): this is their
    entry point. `policy` and `audit verify` never load the vision stack, so they skip it.

    Besides the runtime's own settings: native libraries' stderr becomes one plain line per kind
    of message (`logfmt.NativeStderr`), the log is logfmt for the service and plain words for a
    person at a terminal, and OpenCV refuses to decode an image larger than the device holds.
    """
    from edge.app import logfmt
    from edge.sources.image_size import MAX_IMAGE_PIXELS
    from edge.vision.runtime import configure_process

    os.environ.setdefault(OPENCV_PIXEL_LIMIT, str(MAX_IMAGE_PIXELS))
    logfmt.NativeStderr().install()
    if log_format == "logfmt":
        logfmt.configure(logging.INFO)
    else:
        logging.basicConfig(level=logging.WARNING, format="edge-camera: note: %(message)s", stream=sys.stderr,
                            force=True)
    configure_process()


def _pipeline(args: argparse.Namespace) -> Pipeline:
    from edge.vision.pipeline import build_pipeline

    _configure_for_models()
    return build_pipeline(detector_config(args))


def sample_image() -> Path:
    """The bundled sample portrait (package data of the demo, a file in an installed wheel or a checkout)."""
    from importlib import resources

    return Path(str(resources.files("edge.demo").joinpath(SAMPLE_PORTRAIT)))


def read_image(path: Path) -> np.ndarray:
    """An image as RGB; one too large for the device is refused from its header, before decoding."""
    import cv2

    from edge.sources.image_size import check_image_file

    if not path.is_file():
        raise InputError(f"{path}: no such file", "give the path of a JPEG, PNG or BMP image")
    check_image_file(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not an image OpenCV can read", "give a JPEG, PNG or BMP image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def observation_json(obs: Observation) -> dict[str, Any]:
    """The anonymised face as `detect` prints it: box, score, pose and nothing else."""
    pose = None if obs.pose is None else {"yaw": obs.pose.yaw, "pitch": obs.pose.pitch, "roll": obs.pose.roll}
    return {"box": list(obs.box), "score": obs.score, "pose": pose}


def cmd_detect(args: argparse.Namespace) -> int:
    from edge.sources.camera import Frame
    from edge.wire.observation import observe

    pipeline = _pipeline(args)
    if not args.json:
        for note in pipeline.selection.notes:
            print(f"note: {note}", file=sys.stderr)
    paths = args.images or [sample_image()]
    failed = 0
    for number, path in enumerate(paths):
        try:
            image = read_image(Path(path))
        except InputError as exc:
            failed += 1
            print(f"edge-camera: {exc}", file=sys.stderr)
            continue
        frame = Frame(image, number, time.time())
        result = pipeline.process(frame, still=True)
        faces = [observation_json(observe(face, track=0)) for face in result.faces]
        if args.json:
            print(json.dumps({"image": str(path), "width": result.width, "height": result.height, "faces": faces}))
        else:
            print(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''} ({result.width}x{result.height})")
            for i, face in enumerate(faces, 1):
                pose = face["pose"]
                pose_text = f"yaw {pose['yaw']:+d} pitch {pose['pitch']:+d} roll {pose['roll']:+d}" if pose else "pose unknown"
                print(f"  face {i}: box {face['box']} score {face['score']:.2f} {pose_text}")
    if failed:
        print(f"edge-camera: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return InputError.exit_code
    return 0


def _summary(samples: list[float]) -> dict[str, float]:
    """Median and high percentile, nearest rank, of a non-empty list of timings."""
    median, high = percentile(samples, 50), percentile(samples, PERCENTILE_HIGH)
    assert median is not None and high is not None, "bench times at least one frame"
    return {"median_ms": round(median, 3), f"p{PERCENTILE_HIGH}_ms": round(high, 3)}


def bench_frame(source: Path | None = None) -> np.ndarray:
    """The sample portrait letterboxed into a 640x480 frame, as a camera would deliver it."""
    from edge.vision.preprocess import letterbox

    return letterbox(read_image(source or sample_image()), *BENCH_FRAME)


def run_bench(pipeline: Pipeline, frames: int, source: Path | None = None) -> dict[str, Any]:
    """Per-stage timings of the pipeline next to the bare interpreter invoke(), interleaved."""
    import cv2
    import numpy as np

    from edge.sources.camera import Frame

    encoded = cv2.imencode(".png", cv2.cvtColor(bench_frame(source), cv2.COLOR_RGB2BGR))[1]
    stages: dict[str, list[float]] = {}
    totals: list[float] = []
    bare: list[float] = []
    runner = pipeline.detector.runner
    for i in range(frames + BENCH_WARMUP):
        t0 = time.perf_counter()
        # The PNG was encoded above from a frame, so it always decodes.
        image = cv2.cvtColor(cast(np.ndarray, cv2.imdecode(encoded, cv2.IMREAD_COLOR)), cv2.COLOR_BGR2RGB)
        t1 = time.perf_counter()
        result = pipeline.process(Frame(image, i, time.time()))
        t2 = time.perf_counter()
        runner.invoke()
        t3 = time.perf_counter()
        if i < BENCH_WARMUP:
            continue
        stages.setdefault("decode_image", []).append((t1 - t0) * 1e3)
        for name, value in result.timings_ms.items():
            stages.setdefault(name, []).append(value)
        totals.append((t2 - t1) * 1e3)
        bare.append((t3 - t2) * 1e3)
    sel = pipeline.selection
    pipeline_median = _summary(totals)["median_ms"]
    bare_median = _summary(bare)["median_ms"]
    return {
        "model": sel.model, "accelerator": sel.accelerator, "runtime": sel.runtime,
        "threads": pipeline.config.delegate.threads, "pose": pipeline.config.pose, "frames": frames,
        "frame_size": list(BENCH_FRAME),
        "stages": {name: _summary(values) for name, values in stages.items()},
        "pipeline": _summary(totals), "bare_invoke": _summary(bare),
        "pipeline_over_bare_invoke": round(pipeline_median / bare_median, 2),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    frames = schema.read_flag("--frames", args.frames, kind=Kind.WHOLE, check=schema.at_least(1),
                              expected="a whole number of frames to time, at least 1")
    report = run_bench(_pipeline(args), BENCH_FRAMES if frames is None else frames)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']} on {report['accelerator']} ({report['runtime']}), {report['threads']} thread(s), "
          f"pose {report['pose']}, {report['frames']} frames of {BENCH_FRAME[0]}x{BENCH_FRAME[1]}")
    print(f"{'stage':<16}{'median ms':>11}{'p90 ms':>9}")
    for name, s in report["stages"].items():
        print(f"{name:<16}{s['median_ms']:>11.3f}{s['p90_ms']:>9.3f}")
    print(f"{'pipeline':<16}{report['pipeline']['median_ms']:>11.3f}{report['pipeline']['p90_ms']:>9.3f}")
    print(f"{'bare invoke()':<16}{report['bare_invoke']['median_ms']:>11.3f}{report['bare_invoke']['p90_ms']:>9.3f}")
    print(f"pipeline / bare invoke = {report['pipeline_over_bare_invoke']:.2f}")
    return 0


def _seconds(flag: str, text: str | None) -> float | None:
    return cast("float | None", schema.read_flag(flag, text, kind=Kind.NUMBER, check=schema.positive,
                                                 expected="a number of seconds, more than 0"))


def _frames(flag: str, text: str | None) -> int | None:
    return cast("int | None", schema.read_flag(flag, text, kind=Kind.WHOLE, check=schema.at_least(1),
                                               expected="a whole number of frames, at least 1"))


def cmd_run(args: argparse.Namespace) -> int:
    """`edge-camera run`: the production service, from its configuration file.

    Every outcome is a logfmt line (journald keeps stderr). A permanent error
    exits 78 so that systemd stops restarting; anything else that ends the
    process (exit 1) is one a restart may cure.
    """
    from edge.app import logfmt
    from edge.app.config import load
    from edge.app.service import STOP_DRAIN_S, RunLimits, run_from_config
    from edge.trust.certificates import CertificateError

    limits = RunLimits(max_seconds=_seconds("--seconds", args.seconds), max_frames=_frames("--frames", args.frames),
                       drain_s=STOP_DRAIN_S)
    _configure_for_models("logfmt")
    log = logging.getLogger("edge.app.cli")
    try:
        outcome = run_from_config(load(args.config), limits, path=args.config)
    except EdgeError as exc:
        permanent = is_permanent(exc) or isinstance(exc, CertificateError)  # a configured certificate file
        code = EXIT_CONFIG if permanent else exc.exit_code
        what = ("permanent: correct it, then restart the service (systemd will not restart it)" if permanent
                else "systemd restarts the service")
        logfmt.event(log, "exit", f"{exc.message}; {what}", level=logging.ERROR, code=code, hint=exc.hint,
                     config=str(args.config))
        return code
    return EXIT_INTERRUPTED if outcome.interrupted else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo.command import run_demo

    seconds = _seconds("--seconds", args.seconds)
    _configure_for_models()
    return run_demo(DEFAULT_DEMO_SECONDS if seconds is None else seconds, _frames("--frames", args.frames),
                    raw=args.json, prefer_embedded=args.embedded_broker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-camera", description="Privacy-first face detection on the device.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edge-camera {firmware_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Deferred)

    detect = sub.add_parser("detect", help="detect faces in images and print anonymised boxes and head pose",
                            options=_detector_options)
    detect.add_argument("images", nargs="*", type=Path, help="image files (default: the bundled sample portrait)")
    detect.add_argument("--json", action="store_true", help="one JSON object per image")
    detect.set_defaults(func=cmd_detect)

    bench = sub.add_parser("bench", help="per-stage timings next to the bare interpreter invoke()",
                           options=_detector_options)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--frames", metavar="N", help=f"frames to time (default: {BENCH_FRAMES})")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser(
        "demo", help="virtual camera -> detection -> private MQTT broker -> print what a subscriber receives")
    demo.add_argument("--seconds", metavar="S", help=f"how long to run (default: {DEFAULT_DEMO_SECONDS:.0f})")
    demo.add_argument("--frames", metavar="N", help="stop after this many frames")
    demo.add_argument("--json", action="store_true", help="print the raw payloads")
    demo.add_argument("--embedded-broker", action="store_true",
                      help="use the embedded amqtt broker even when mosquitto is installed")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the service: configured camera -> detection -> MQTT",
                         epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                     help=f"the service's TOML configuration (default {DEFAULT_CONFIG})")
    run.add_argument("--seconds", metavar="S", help="stop after this long (default: until SIGTERM)")
    run.add_argument("--frames", metavar="N", help="stop after this many frames")
    run.set_defaults(func=cmd_run)

    from edge.app.policy_commands import add_parsers as add_policy_parsers

    add_policy_parsers(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))

    from edge.app.gallery_commands import add_parsers as add_gallery_parsers

    add_gallery_parsers(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))

    from edge.app.factory_reset import add_parser as add_factory_reset_parser

    add_factory_reset_parser(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler("edge-camera", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
