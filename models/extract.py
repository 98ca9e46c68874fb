#!/usr/bin/env python3
"""Re-extract the shipped models from their PyPI wheel and check every hash.

Why: the `.tflite` files in this folder are copies of files inside
`mediapipe==0.10.14`; anyone can re-derive them from PyPI and compare, so the
repository never has to be trusted about where its weights came from.

    python3 models/extract.py            # download the wheel, extract, verify
    python3 models/extract.py --check    # only verify the files already here
    python3 models/extract.py --wheel W  # use a wheel already on disk

Exit codes: 0 all hashes match, 1 a hash differs or a file is missing,
2 the wheel could not be obtained.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shipped_variants(manifest: dict) -> list[tuple[str, dict]]:
    out = []
    for name, model in manifest["models"].items():
        for accel, variant in model["variants"].items():
            if variant.get("shipped"):
                out.append((f"{name}/{accel}", variant))
    return out


def download_wheel(source: dict, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--python-version", "3.11", "--platform",
         "manylinux2014_x86_64", source["package"], "-d", str(into)],
        check=True,
    )
    return into / source["wheel"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files here, extract nothing")
    parser.add_argument("--wheel", type=Path, help="a mediapipe wheel already downloaded")
    args = parser.parse_args()
    manifest = json.loads((HERE / "manifest.json").read_text())
    failures = 0
    if not args.check:
        source = manifest["sources"]["mediapipe-0.10.14"]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                wheel = args.wheel or download_wheel(source, Path(tmp))
            except (subprocess.CalledProcessError, OSError) as exc:
                print(f"could not download {source['package']}: {exc}", file=sys.stderr)
                return 2
            wheel_hash = sha256(wheel.read_bytes())
            if wheel_hash != source["wheel_sha256"]:
                print(f"wheel hash {wheel_hash} differs from the manifest's {source['wheel_sha256']}", file=sys.stderr)
                return 1
            with zipfile.ZipFile(wheel) as zf:
                licence = source["license_file"]
                (HERE / licence["file"]).write_bytes(zf.read(licence["path"]))
                print(f"extracted the wheel's licence: {licence['path']}")
                for label, variant in shipped_variants(manifest):
                    (HERE / variant["file"]).write_bytes(zf.read(variant["source_path"]))
                    print(f"extracted {label}: {variant['source_path']}")
    licence = manifest["sources"]["mediapipe-0.10.14"]["license_file"]
    checks = [("licence", {"file": licence["file"], "sha256": licence["sha256"]})] + shipped_variants(manifest)
    for label, variant in checks:
        path = HERE / variant["file"]
        if not path.exists():
            print(f"MISSING {label}: {path}")
            failures += 1
            continue
        digest = sha256(path.read_bytes())
        ok = digest == variant["sha256"]
        failures += not ok
        print(f"{'ok  ' if ok else 'BAD '} {label}: {variant['file']} {digest}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
