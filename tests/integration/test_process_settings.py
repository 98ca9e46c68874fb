"""Process-wide side effects happen only when an entry point asks (`edge.vision.runtime.configure_process`).

Importing the library, or building a pipeline, must leave a host process's
stderr, unraisable hook and OpenCV thread pool as they were, and read no file
at import; an entry point's one call makes the settings the service wants.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FACE_MESH_FILE = "canonical_face_model.csv"


def _run(script: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def test_importing_every_module_and_building_a_pipeline_changes_no_process_state() -> None:
    script = (
        "import cv2, json, pkgutil, importlib, sys\n"
        "import edge\n"
        "cv2.setNumThreads(3)\n"
        "hook = sys.unraisablehook\n"
        "opened = []\n"
        "sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == 'open' else None)\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError:\n"  # optional hardware libraries (picamera2) may be absent
        "        pass\n"
        "imported = {'threads': cv2.getNumThreads(), 'hook': sys.unraisablehook is hook,\n"
        f"            'mesh_read': any(p.endswith({FACE_MESH_FILE!r}) for p in opened)}}\n"
        "from edge.vision.pipeline import DetectorConfig, build_pipeline\n"
        "build_pipeline(DetectorConfig(pose='keypoints'))\n"
        "built = {'threads': cv2.getNumThreads(), 'hook': sys.unraisablehook is hook,\n"
        f"         'mesh_read': any(p.endswith({FACE_MESH_FILE!r}) for p in opened)}}\n"
        "print(json.dumps([imported, built]))\n"
    )
    imported, built = json.loads(_run(script).stdout.splitlines()[-1])
    assert imported == {"threads": 3, "hook": True, "mesh_read": False}
    # Building is not an entry point either; the generic face is read on first use (keypoint pose needs it).
    assert built == {"threads": 3, "hook": True, "mesh_read": True}


def test_building_an_interpreter_shows_the_runtime_log_unless_the_entry_point_quiets_it() -> None:
    build = (
        "from edge.vision.manifest import load_manifest, locate, search_dirs\n"
        "from edge.vision.runtime import configure_process, cpu_runner, load_runtime\n"
        "spec = load_manifest().get('blazeface-short')\n"
        "path = locate(spec.variant('cpu'), spec.name, search_dirs(()))\n"
        "{configure}"
        "cpu_runner(load_runtime(), path, 1)\n"
        "import sys; print('still here', file=sys.stderr)\n"
    )
    loud = _run(build.format(configure=""))
    quiet = _run(build.format(configure="configure_process()\n"))
    assert "XNNPACK" in loud.stderr  # the line the quieting is for, so the check below can fail
    assert "XNNPACK" not in quiet.stderr and "still here" in quiet.stderr  # fd 2 is back afterwards


def test_configure_process_sets_opencv_threads_and_drops_only_failed_delegate_destructor_noise() -> None:
    script = (
        "import gc, sys, cv2\n"
        "from edge.vision.runtime import OPENCV_THREADS, configure_process, load_runtime\n"
        "runtime = load_runtime()\n"
        "{configure}"
        "try:\n"
        "    runtime.load_delegate('/nonexistent/libdelegate.so', {{}})\n"
        "except (ValueError, OSError):\n"
        "    pass\n"
        "gc.collect()\n"
        "class Other:\n"
        "    def __del__(self):\n"
        "        raise RuntimeError('an unrelated destructor failed')\n"
        "Other()\n"
        "gc.collect()\n"
        "print(cv2.getNumThreads() == OPENCV_THREADS)\n"
    )
    plain = _run(script.format(configure=""))
    configured = _run(script.format(configure="configure_process()\nconfigure_process()\n"))
    # The real LiteRT delegate's destructor complains after a failed load: the noise the hook is for.
    assert "Delegate.__del__" in plain.stderr
    assert "Delegate.__del__" not in configured.stderr
    assert "an unrelated destructor failed" in configured.stderr  # everything else still reaches the old hook
    assert configured.stdout.split() == ["True"]
