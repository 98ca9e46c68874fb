"""`edge-camera detect` and `bench` as an installer runs them: real process, real exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.common.errors import ConfigError
from edge.vision.pipeline import DetectorConfig

from support.data import REPO

ALLOWED_FACE_FIELDS = {"box", "score", "pose"}


def edge_camera(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.app.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_detect_prints_only_anonymised_observations(shared_images: Path) -> None:
    result = edge_camera("detect", "--json", str(shared_images / "coral_face.jpg"), str(shared_images / "mtcnn_no_faces.jpg"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [len(line["faces"]) for line in lines] == [4, 0]
    for line in lines:
        assert set(line) == {"image", "width", "height", "faces"}
        for face in line["faces"]:
            assert set(face) == ALLOWED_FACE_FIELDS
            assert len(face["box"]) == 4 and all(0 <= v <= 1 for v in face["box"])
            assert set(face["pose"]) == {"yaw", "pitch", "roll"}
            assert all(isinstance(v, int) for v in face["pose"].values())
            assert face["score"] == round(face["score"], 2)


def test_detect_without_arguments_runs_on_the_bundled_sample() -> None:
    result = edge_camera("detect", "--json", "--pose", "keypoints")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["image"].endswith("astronaut.png") and len(line["faces"]) == 1


def test_unreadable_images_are_reported_and_the_rest_still_processed(tmp_path: Path, shared_images: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    result = edge_camera("detect", "--json", str(junk), str(shared_images / "coral_grace_hopper.bmp"), str(tmp_path / "missing.png"))
    assert result.returncode == 5
    assert "junk.jpg: not an image" in result.stderr and "missing.png: no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_full_range_on_the_edge_tpu_is_refused_with_the_compiled_models() -> None:
    result = edge_camera("detect", "--delegate", "edgetpu")
    assert result.returncode == 3
    assert "blazeface-short" in result.stderr and "Traceback" not in result.stderr


def test_edge_tpu_that_is_absent_is_a_clear_start_up_error(shared_models: Path) -> None:
    result = edge_camera("detect", "--delegate", "edgetpu", "--device", "usb:1", "--model", "blazeface-short",
                         "--model-dir", str(shared_models))
    assert result.returncode == 4
    assert "libedgetpu.so.1" in result.stderr and "usb:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_human_readable_output_says_how_many_faces(shared_images: Path) -> None:
    result = edge_camera("detect", "--pose", "off", str(shared_images / "fr_two_people.jpg"))
    assert result.returncode == 0
    assert "2 faces" in result.stdout and "pose unknown" in result.stdout


def test_bench_reports_stages_next_to_bare_invoke() -> None:
    result = edge_camera("bench", "--json", "--frames", "20", "--model", "blazeface-short", "--pose", "keypoints")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"decode_image", "preprocess", "invoke", "decode", "pose"} <= set(report["stages"])
    assert report["bare_invoke"]["median_ms"] > 0 and report["pipeline_over_bare_invoke"] > 0
    assert report["threads"] == 1 and report["accelerator"] == "cpu"


@pytest.mark.parametrize("data, where", [
    ({"model": 7}, "[detector] model"),
    ({"threads": "two"}, "[detector] threads"),
    ({"threads": True}, "[detector] threads"),
    ({"pose": "emotion"}, "[detector] pose"),
    ({"score_threshold": 1.5}, "[detector] score_threshold"),
    ({"tiled": "yes"}, "[detector] tiled"),
    ({"colour": "red"}, "[detector] colour"),
    ({"delegate": "tpu"}, "[detector] delegate"),
])
def test_detector_configuration_errors_name_the_setting(data: dict, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        DetectorConfig.from_mapping(data)
    assert err.value.where == where


def test_detector_configuration_reads_every_setting() -> None:
    config = DetectorConfig.from_mapping({
        "model": "blazeface-short", "delegate": "edgetpu", "device": "pci:0", "threads": 2, "score_threshold": 0.6,
        "pose": "keypoints", "tiled": True, "tile_size": 256, "tile_overlap": 64, "model_dirs": ["/opt/models"],
    })
    assert config.delegate.kind == "edgetpu" and config.delegate.device == "pci:0" and config.delegate.threads == 2
    assert config.tile_size == 256 and config.model_dirs == (Path("/opt/models"),)


def test_detect_refuses_an_image_too_large_for_the_device_before_decoding_it(tmp_path: Path,
                                                                            shared_images: Path) -> None:
    """A 20000x20000 PNG would take 2.4 GB to decode; it is refused from its header and the rest still run."""
    import resource

    from support.images import huge_png

    huge = tmp_path / "huge.png"
    huge_png(huge, 20000, 20000)
    result = edge_camera("detect", "--json", str(huge), str(shared_images / "coral_face.jpg"))
    assert result.returncode == 5
    assert "huge.png: is 20000x20000 pixels" in result.stderr and "scale it down" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.splitlines()) == 1  # the other image was processed
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 600, peak_mb  # nothing near the 2.4 GB a decode would have taken


def test_bench_with_zero_frames_is_a_usage_error() -> None:
    result = edge_camera("bench", "--frames", "0")
    assert result.returncode == 2
    assert "--frames 0: is below 1" in result.stderr and "Traceback" not in result.stderr


def test_run_help_documents_its_exit_codes() -> None:
    result = edge_camera("run", "--help")
    assert result.returncode == 0
    assert "78   permanent" in result.stdout and "RestartPreventExitStatus=78" in result.stdout
    assert "130  interrupted" in result.stdout
