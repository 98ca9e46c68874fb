"""Instructions per frame, ours vs the bare invoke, counted by callgrind: a figure the noise cannot move.

Why: on a shared machine wall time (and even CPU time) per frame swings with
the load; the count of instructions executed does not. Run this script under
`valgrind --tool=callgrind` twice per contender, with 0 and with N timed
frames after the same warm-up, and divide the difference of the two totals by
N: start-up (imports, model loading, XNNPACK's weight packing) cancels out.

    for kind in ours bare; do for n in 0 40; do
      valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-$kind-$n.out \\
        .venv/bin/python benchmarks/instructions.py $kind short $n 2>&1 | grep refs
    done; done

`ours` is `Pipeline.detect` on a 640x480 frame (pose off, one thread); `bare`
is the same runner's `invoke()` alone. `callgrind_annotate /tmp/cg-ours-40.out`
shows where the instructions go. Instructions are not time: a cache miss costs
one instruction and a hundred cycles, which is what this count leaves out.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2

from edge.vision.pipeline import DetectorConfig, build_pipeline
from edge.vision.preprocess import letterbox
from edge.vision.runtime import DelegateConfig, configure_process

MODELS = {"short": "blazeface-short", "full": "blazeface-full"}
KINDS = ("ours", "bare")
PHOTO = Path(__file__).resolve().parents[2] / "shared" / "images" / "fr_obama.jpg"
WARM_UP = 10


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in KINDS or argv[1] not in MODELS or not argv[2].isdigit():
        print(f"usage: instructions.py {{{'|'.join(KINDS)}}} {{{'|'.join(MODELS)}}} FRAMES", file=sys.stderr)
        return 2
    kind, model, frames = argv[0], argv[1], int(argv[2])
    configure_process()
    bgr = cv2.imread(str(PHOTO))
    if bgr is None:
        print(f"{PHOTO}: missing or unreadable (the benchmarks read ../shared beside the repository)", file=sys.stderr)
        return 2
    frame = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 640, 480)
    pipeline = build_pipeline(DetectorConfig(model=MODELS[model], pose="off", near_faces_every=0,  # one model
                                             delegate=DelegateConfig(kind="cpu", threads=1)))
    if kind == "ours":
        def run() -> None:
            pipeline.detect(frame)
    else:
        run = pipeline.detector.runner.invoke
    for _ in range(WARM_UP + frames):
        run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
