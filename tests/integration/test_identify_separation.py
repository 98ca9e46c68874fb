"""The detection path never imports `edge.identify`; identification is reachable only through the gate.

The static rule is the `detection-path-without-identify` contract in .importlinter (run by CI's
`lint-imports`). Its one ignored import, the gallery commands', is allowed only because it is made
inside the command handlers; these tests check that it stays lazy: no module-level import, and a fresh
interpreter that imports every other module does not load edge.identify.
"""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import edge

REPO = Path(__file__).resolve().parents[2]
# The detection path by name; each one present must load without edge.identify.
DETECTION_MODULES = ("edge.vision.pipeline", "edge.delivery.publish", "edge.sources.camera", "edge.vision.runtime", "edge.wire.observation",
                     "edge.wire.track", "edge.pose.fit", "edge.app.service", "edge.app.cli", "edge.policy.gate", "edge.app.policy_commands")


def _edge_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
    return sorted(n for n in names if not n.startswith("edge.identify"))


def _module_level(tree: ast.Module):  # type: ignore[no-untyped-def]
    """Nodes that run at import time (not inside functions): where an import would load identify."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def test_no_module_outside_identify_imports_it_at_import_time() -> None:
    """Command handlers may import it on demand (edge-camera gallery erase); module level never."""
    offenders = []
    for path in (REPO / "edge").rglob("*.py"):
        if "identify" in path.relative_to(REPO / "edge").parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _module_level(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ("." * node.level) + (node.module or "")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            if any(n.startswith("edge.identify") or n.lstrip(".").startswith("identify") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_importing_the_detection_path_does_not_load_identify() -> None:
    """A fresh interpreter imports every edge module but edge.identify; identify must stay unloaded."""
    modules = sorted(set(_edge_modules()) | {m for m in DETECTION_MODULES if _exists(m)})
    assert "edge.vision.pipeline" in modules and "edge.delivery.publish" in modules
    script = (
        "import importlib, sys, json\n"
        f"mods = {modules!r}\n"
        "failed = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as exc:\n"  # optional hardware libraries (picamera2) may be absent here
        "        failed[m] = str(exc)\n"
        "loaded = sorted(n for n in sys.modules if n.startswith('edge.identify'))\n"
        "print(json.dumps({'loaded': loaded, 'failed': failed}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], f"detection path loaded {report['loaded']}"
    core = {m: report["failed"][m] for m in ("edge.vision.pipeline", "edge.delivery.publish", "edge.policy.gate") if m in report["failed"]}
    assert not core, f"detection-path modules failed to import, so the check above proved nothing: {core}"


def _exists(module: str) -> bool:
    return (REPO / (module.replace(".", "/") + ".py")).exists()
