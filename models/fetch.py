#!/usr/bin/env python3
"""Packaging step: obtain the models no PyPI package ships, and check their hashes.

Why: the Ultra-Light-Fast RFB-320 model and MediaPipe's BlazeFace compiled
for the Edge TPU come from upstream repositories, not from a wheel. On a
networked build machine this fetches each from the exact commit the manifest
names and installs it only when its SHA-256 matches; on a device, or offline,
`--from DIR` installs them from a folder (a USB stick, ../shared/models) with
the same check. Nothing is installed that does not match.

    python3 models/fetch.py --dest /usr/share/edge-camera/models            # from upstream
    python3 models/fetch.py --dest /usr/share/edge-camera/models --from DIR # from a folder

Exit codes: 0 every unshipped model installed and verified; 1 a hash differs
or a file is missing (nothing of it installed); 2 bad usage.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"
TIMEOUT_S = 60


def unshipped(manifest: dict) -> list[tuple[str, dict, dict]]:
    """(label, variant, source) for every build the repository does not carry."""
    out = []
    for name, model in manifest["models"].items():
        for accel, variant in model["variants"].items():
            if not variant.get("shipped"):
                out.append((f"{name}/{accel}", variant, manifest["sources"][variant["source"]]))
    return out


def obtain(variant: dict, source: dict, folder: Path | None) -> bytes:
    if folder is not None:
        return (folder / variant["file"]).read_bytes()
    url = RAW_URL.format(**source)
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - a fixed https URL
        return response.read()


def install(data: bytes, dest: Path, name: str) -> None:
    """Write atomically: a half-written model is never seen under its name."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, dest / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True, help="folder to install into, e.g. /usr/share/edge-camera/models")
    parser.add_argument("--from", dest="folder", type=Path, help="take the files from this folder instead of upstream")
    args = parser.parse_args(argv)
    manifest = json.loads((HERE / "manifest.json").read_text())
    failures = 0
    for label, variant, source in unshipped(manifest):
        try:
            data = obtain(variant, source, args.folder)
        except OSError as exc:
            print(f"MISSING {label}: {variant['file']}: {exc}")
            failures += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != variant["sha256"]:
            print(f"BAD     {label}: {variant['file']} has SHA-256 {digest}, expected {variant['sha256']}; not installed")
            failures += 1
            continue
        install(data, args.dest, variant["file"])
        print(f"ok      {label}: {variant['file']} {digest} -> {args.dest}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
