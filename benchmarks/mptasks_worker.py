"""MediaPipe Tasks 1.x FaceDetector, driven over a pipe by `benchmarks/detection.py`.

Why a separate process: MediaPipe 1.x needs numpy 2 and ships its own OpenCV
and LiteRT, which clash with MediaPipe 0.10.14 (numpy<2) in `.venv-bench`. So
it runs here, in `.venv-mptasks` (`bash benchmarks/setup` makes both), and
times itself: the pipe's round trip is never part of a sample.

What one sample is: wrapping the frame in `mediapipe.Image` and
`FaceDetector.detect(image)` (IMAGE running mode) on the project's own
`.tflite` file, as a user calling the Tasks API on a 640x480 RGB frame would.

Protocol (stdin/stdout, one line per message, JSON):
  parent -> {"models": {"short": path, "full": path}, "threshold": 0.5, "frames": N}
  then N times: {"name": ..., "shape": [h, w, 3]} followed by h*w*3 raw RGB bytes
  worker -> {"ready": true, "mediapipe": version, "numpy": version}
  parent -> {"model": "short"|"full", "frame": index}
  worker -> {"ms": wall ms inside this process, "cpu_ms": process CPU ms (all threads), "faces": count}
  parent -> {"model": "short"|"full", "stream": [index, ...]}   (the frames back to back, `--order stream`)
  worker -> {"ms": wall ms for all of them, "cpu_ms": their process CPU ms, "faces": count over all}
  parent closes stdin to stop it.
Errors go back as {"error": text} and the worker exits.
"""

from __future__ import annotations

import json
import os
import sys
import time

# MediaPipe's C++ logging would interleave with the benchmark's own output on stderr.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MS_PER_S = 1e3
# Above any NMS overlap that merges distinct faces; MediaPipe's own default.
MIN_SUPPRESSION_THRESHOLD = 0.3


def _send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _read_exact(stream: object, count: int) -> bytes:
    data = stream.read(count)  # type: ignore[attr-defined]
    if len(data) != count:
        raise EOFError(f"expected {count} bytes of frame data, got {len(data)}")
    return data


def main() -> int:
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks.python import BaseOptions, vision

    stdin = sys.stdin.buffer
    try:
        setup = json.loads(stdin.readline())
        frames = []
        for _ in range(int(setup["frames"])):
            header = json.loads(stdin.readline())
            h, w, c = header["shape"]
            frames.append(np.frombuffer(_read_exact(stdin, h * w * c), np.uint8).reshape(h, w, c).copy())
        detectors = {
            model: vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_path=path),
                running_mode=vision.RunningMode.IMAGE,
                min_detection_confidence=float(setup["threshold"]),
                min_suppression_threshold=MIN_SUPPRESSION_THRESHOLD,
            ))
            for model, path in setup["models"].items()
        }
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which says what failed
        _send({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send({"ready": True, "mediapipe": mp.__version__, "numpy": np.__version__})
    for line in stdin:
        request = json.loads(line)
        detector = detectors[request["model"]]
        chosen = [frames[int(i)] for i in request["stream"]] if "stream" in request else [frames[int(request["frame"])]]
        faces = 0
        cpu0 = time.process_time()
        start = time.perf_counter()
        for frame in chosen:
            faces += len(detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame)).detections)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        _send({"ms": elapsed * MS_PER_S, "cpu_ms": cpu * MS_PER_S, "faces": faces})
    for detector in detectors.values():
        detector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
