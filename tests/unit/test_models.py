"""The manifest is the only way a model file gets loaded, and it checks hashes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.common.errors import ModelError
from edge.vision.manifest import REPO_MODELS, file_sha256, load_manifest, locate, parse_manifest, search_dirs
from edge.vision.decode.blazeface import ssd_anchors

MANIFEST = json.loads((REPO_MODELS / "manifest.json").read_text())


def test_every_shipped_model_matches_its_hash() -> None:
    result = subprocess.run([sys.executable, str(REPO_MODELS / "extract.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 4  # three models and the wheel's licence


def test_unshipped_models_are_not_in_the_repository() -> None:
    manifest = load_manifest()
    for spec in manifest.models.values():
        for variant in spec.variants.values():
            assert (REPO_MODELS / variant.file).exists() == variant.shipped, variant.file


def test_shared_models_match_the_manifest(shared_models: Path) -> None:
    manifest = load_manifest()
    for name in ("ulfd-rfb320", "blazeface-short"):
        for variant in manifest.get(name).variants.values():
            if not variant.shipped:
                assert locate(variant, name, (shared_models,)) == shared_models / variant.file


def test_a_tampered_model_is_refused(tmp_path: Path) -> None:
    variant = load_manifest().get("blazeface-full").variant("cpu")
    tampered = tmp_path / variant.file
    data = bytearray((REPO_MODELS / variant.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        locate(variant, "blazeface-full", (tmp_path, REPO_MODELS))
    assert "does not match the manifest" in err.value.message
    assert variant.sha256 in err.value.message and file_sha256(tampered) in err.value.message


def test_a_missing_model_names_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    variant = load_manifest().get("ulfd-rfb320").variant("cpu")
    with pytest.raises(ModelError) as err:
        locate(variant, "ulfd-rfb320", (tmp_path,))
    assert str(tmp_path) in err.value.message
    assert "not shipped" in (err.value.hint or "")


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ModelError) as err:
        load_manifest().get("blazeface-huge")
    assert "blazeface-full" in (err.value.hint or "")


def test_cpu_only_model_has_no_edgetpu_build_and_says_which_do() -> None:
    manifest = load_manifest()
    with pytest.raises(ModelError) as err:
        manifest.get("blazeface-full").variant("edgetpu")
    assert "edgetpu" in err.value.message
    assert manifest.compiled_for("edgetpu") == ["blazeface-short"]


def test_manifest_rejects_unknown_accelerators() -> None:
    broken = json.loads(json.dumps(MANIFEST))
    broken["models"]["blazeface-full"]["variants"]["gpu"] = broken["models"]["blazeface-full"]["variants"]["cpu"]
    with pytest.raises(ModelError):
        parse_manifest(broken, REPO_MODELS)


@pytest.mark.parametrize("name, count", [("blazeface-short", 896), ("blazeface-full", 2304)])
def test_anchor_settings_give_mediapipes_anchor_counts(name: str, count: int) -> None:
    anchors = ssd_anchors(MANIFEST["models"][name]["anchors"])
    assert anchors.shape == (count, 4)
    assert (anchors[:, 2:] == 1.0).all()  # fixed anchor size
    assert 0 < anchors[:, :2].min() and anchors[:, :2].max() < 1


def test_short_range_anchor_grid_matches_its_strides() -> None:
    anchors = ssd_anchors(MANIFEST["models"]["blazeface-short"]["anchors"])
    # stride 8 on 128 px: 16x16 cells, 2 anchors each; then 8x8 cells, 6 anchors each.
    assert anchors[0, 0] == pytest.approx(0.5 / 16)
    assert anchors[512, 0] == pytest.approx(0.5 / 8)
    assert len({tuple(a) for a in anchors[:512].tolist()}) == 256


def test_search_dirs_put_configured_and_environment_dirs_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MODEL_DIRS", str(tmp_path / "env"))
    dirs = search_dirs((tmp_path / "configured",))
    assert dirs[:2] == (tmp_path / "configured", tmp_path / "env")
    assert REPO_MODELS in dirs


def run_fetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO_MODELS / "fetch.py"), *args], capture_output=True, text=True)


def test_packaging_step_installs_the_unshipped_models_after_checking_them(tmp_path: Path, shared_models: Path) -> None:
    dest = tmp_path / "installed"
    result = run_fetch("--dest", str(dest), "--from", str(shared_models))
    assert result.returncode == 0, result.stdout
    manifest = load_manifest()
    for name in ("ulfd-rfb320", "blazeface-short"):
        for variant in manifest.get(name).variants.values():
            if not variant.shipped:
                assert file_sha256(dest / variant.file) == variant.sha256


def test_packaging_step_refuses_a_file_whose_hash_differs(tmp_path: Path, shared_models: Path) -> None:
    source = tmp_path / "stick"
    shutil.copytree(shared_models, source)
    victim = source / "face-detector-quantized_edgetpu.tflite"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    dest = tmp_path / "installed"
    result = run_fetch("--dest", str(dest), "--from", str(source))
    assert result.returncode == 1
    assert "BAD" in result.stdout and "not installed" in result.stdout
    assert not (dest / victim.name).exists()
    assert (dest / "ulfd_version-RFB-320_without_postprocessing.tflite").exists()
