"""On a Raspberry Pi: does XNNPACK run the full-range model's sparse weights on its sparse kernels?

Why: the full-range BlazeFace file stores 46 convolution weights as sparse tensors. XNNPACK has
sparse (NCHW, `spmm`) kernels for exactly such MediaPipe models on ARM, and takes them only when
the runtime was built with sparse inference and the CPU has the kernels; otherwise it densifies
the weights at load and runs them dense. On x86 (the development machines) no sparse kernel runs
(docs/benchmarks.md, "The inference itself"), so whether the Pi's LiteRT wheel takes that path,
and so what the full-range model costs there, can only be seen on a Pi.

The check counts instructions, not time: it runs a few bare invokes of the full-range model under
`valgrind --tool=callgrind` (`benchmarks/instructions.py bare full N`) and reads which XNNPACK
kernels ran. It needs valgrind (`sudo apt install valgrind`) and takes a few minutes on a Pi 4.

    .venv/bin/python -m pytest hw-tests/test_pi_inference.py -s
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PI_MODEL = Path("/proc/device-tree/model")
FRAMES = 5
# callgrind_annotate's lines: "12,345,678 (16.02%)  ???:xnn_f32_gemm_minmax_ukernel_6x16__... [/path/lib.so]".
ANNOTATION_LINE = re.compile(r"^\s*[\d,]+\s+\(\s*([\d.]+)%\)\s+\S*?:?(xnn_\w+)")
# XNNPACK's sparse path: sparse matrix times dense (spmm) and the NCHW convolutions around it.
SPARSE_KERNEL = re.compile(r"spmm|chw", re.IGNORECASE)


def kernels_in_annotation(text: str) -> list[tuple[str, float]]:
    """XNNPACK functions in a `callgrind_annotate` listing with their share of all instructions, largest first."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = ANNOTATION_LINE.match(line)
        if match:
            found[match.group(2)] = found.get(match.group(2), 0.0) + float(match.group(1)) / 100.0
    return sorted(found.items(), key=lambda item: -item[1])


def sparse_kernels(kernels: list[tuple[str, float]]) -> list[str]:
    return [name for name, _ in kernels if SPARSE_KERNEL.search(name)]


def pi_model() -> str | None:
    try:
        text = PI_MODEL.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None
    return text if "raspberry pi" in text.lower() else None


needs_pi = pytest.mark.skipif(pi_model() is None, reason="not a Raspberry Pi (no 'Raspberry Pi' in /proc/device-tree/model)")
needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None,
                                    reason="valgrind is not installed (sudo apt install valgrind)")


@needs_pi
@needs_valgrind
def test_the_full_range_model_runs_on_xnnpack_sparse_kernels(tmp_path: Path, record_property) -> None:
    out = tmp_path / "callgrind.out"
    run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                          str(REPO / "benchmarks" / "instructions.py"), "bare", "full", str(FRAMES)],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    annotation = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)], capture_output=True, text=True,
                                check=True).stdout
    kernels = kernels_in_annotation(annotation)
    record_property("machine", f"{pi_model()} ({platform.machine()})")
    record_property("xnnpack_kernels", ", ".join(f"{name} {share:.1%}" for name, share in kernels[:12]))
    print(f"\n{pi_model()}: XNNPACK kernels by share of instructions:")
    for name, share in kernels[:12]:
        print(f"  {share:6.1%}  {name}")
    sparse = sparse_kernels(kernels)
    assert sparse, ("XNNPACK ran the full-range model dense on this Pi: no sparse (spmm / CHW) kernel among "
                    f"{len(kernels)} kernels. The runtime wheel was built without sparse inference; the "
                    "full-range model costs what its dense copy costs (docs/benchmarks.md).")
