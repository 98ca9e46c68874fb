"""docs/identification.md's "Try it" walkthrough, run from the document's own shell blocks.

The blocks are taken from the document as written, so a step that stops working, or a document
that drifts from the tools, fails here. What the test changes, and only that:
- the model: the tiny TFLite model of tests/support/tiny_tflite.py instead of MobileFaceNet from
  ../shared (the plumbing is what is walked; recognition is tested elsewhere), and a second
  photograph made here instead of one from ../shared;
- the broker's port (a free one) and, as root, Mosquitto's `user root` (the document says so);
- `edge-camera` runs with the clock's synchronisation source saying "synchronised" (the machine's
  clock may not be NTP-synchronised; tests/integration/test_clock_gate.py keeps the refusal);
- the two background processes' ids are kept, to stop them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.demo.broker import free_port
from support.tiny_tflite import tiny_embedding_model

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "identification.md"
LABEL = re.compile(r"enrolled 'p-demo' from 1 photograph\(s\): label ([0-9a-f]{32})")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mosquitto") is None or shutil.which("mosquitto_sub") is None,
                                 reason="needs the mosquitto and mosquitto_sub binaries")]

SYNCHRONISED = (
    "import sys\n"
    "from edge.policy import clock\n"
    "clock.SystemClockSync.__call__ = lambda self: clock.ClockState(True, 'synchronised (test)')\n"
    "from edge.app.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n")


def walkthrough_script() -> str:
    text = DOC.read_text()
    section = text[text.index("## Try it"):text.index("## The running mode")]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


def adapted(script: str, port: int, model: Path, other_photo: Path) -> str:
    replacements = [
        ("../shared/models/mobilefacenet_float32.tflite", str(model)),
        ("../shared/images/fr_obama1.jpg", str(other_photo)),
        ("8883", str(port)),
        ("mosquitto -c try/mosquitto.conf &", "mosquitto -c try/mosquitto.conf & MPID=$!; sleep 1;"),
        ("-t 'edge/v1/+/status' -v &", "-t 'edge/v1/+/status' -v > try/subscriber.out & SPID=$!; sleep 1;"),
    ]
    if os.geteuid() == 0:
        replacements.append(("listener ", "user root\nlistener "))
    for old, new in replacements:
        assert old in script, f"the walkthrough no longer holds {old!r}"
        script = script.replace(old, new)
    edge_camera = f'edge-camera() {{ "{sys.executable}" -c "$SYNCHRONISED" "$@"; }}\n'
    return ("set -eu\ntrap 'kill ${SPID:-} ${MPID:-} 2>/dev/null || true' EXIT\n" + edge_camera + script +
            "\nsleep 2\n")


def test_the_documented_walkthrough_enrols_identifies_and_publishes_a_label(tmp_path: Path) -> None:
    model = tmp_path / "tiny-embedding.tflite"
    model.write_bytes(tiny_embedding_model())
    other = tmp_path / "nobody.png"  # a face-free photograph: `identify` says 0 faces
    cv2.imwrite(str(other), np.full((240, 320, 3), 90, np.uint8))
    # The document runs from a checkout: its relative paths to the demo portrait and the shipped ACL.
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "demo").symlink_to(REPO / "edge" / "demo")
    (tmp_path / "systemd").symlink_to(REPO / "systemd")
    script = adapted(walkthrough_script(), free_port(), model, other)
    env = {**os.environ, "SYNCHRONISED": SYNCHRONISED, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    out = run.stdout
    assert "mode        identification" in out
    label = LABEL.search(out)
    assert label is not None, out
    assert f"face 1: box [0.339, 0.132, 0.203, 0.203] {label.group(1)} score 1.00" in out
    assert f"{other}: 0 faces" in out
    assert f"p-demo  label {label.group(1)}  purpose 'tell who is at the door'" in out
    received = (tmp_path / "try" / "subscriber.out").read_text().splitlines()
    topics = [line.split(" ", 1)[0] for line in received]
    assert set(topics) == {"edge/v1/door-1/status", "edge/v1/door-1/identities"}, received
    statuses = [json.loads(line.split(" ", 1)[1]) for line in received if line.startswith("edge/v1/door-1/status")]
    assert statuses[0]["mode"] == "identification"
    identities = [json.loads(line.split(" ", 1)[1]) for line in received if "/identities " in line]
    assert identities and {m["label"] for m in identities} == {label.group(1)}
    assert all(set(m) == {"device", "seq", "track", "label", "score"} and m["score"] >= 0.5 for m in identities)
    assert "p-demo" not in "\n".join(received)
