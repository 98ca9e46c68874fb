"""Runtime layer and delegates: real interpreter, real models; absent accelerators fail clearly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.common.errors import AcceleratorError, ConfigError, ModelError
from edge.vision.runtime import (
    DelegateConfig,
    PixelTransform,
    TensorCodec,
    cpu_runner,
    edgetpu_devices,
    library_problem,
    load_runtime,
)
from edge.vision.manifest import load_manifest
from edge.vision.pipeline import DetectorConfig, build_pipeline, open_detector_runner


def test_litert_is_preferred_and_reported() -> None:
    runtime = load_runtime()
    assert runtime.name == "ai_edge_litert"


def test_falls_back_to_tflite_runtime_name_when_litert_is_absent() -> None:
    with pytest.raises(ModelError) as err:
        load_runtime(("no_such_runtime.interpreter",))
    assert "ai-edge-litert" in (err.value.hint or "")


def test_explicit_edgetpu_without_the_library_names_library_and_device(capfd: pytest.CaptureFixture[str], shared_models: Path) -> None:
    config = DetectorConfig(model="blazeface-short", delegate=DelegateConfig(kind="edgetpu", device="usb:0"),
                            pose="off", model_dirs=(shared_models,))
    with pytest.raises(AcceleratorError) as err:
        build_pipeline(config)
    assert "libedgetpu.so.1" in err.value.message and "usb:0" in err.value.message
    assert "Traceback" not in capfd.readouterr().err


def test_explicit_edgetpu_with_a_cpu_only_model_lists_the_compiled_models() -> None:
    config = DetectorConfig(model="blazeface-full", delegate=DelegateConfig(kind="edgetpu"), pose="off")
    with pytest.raises(ModelError) as err:
        build_pipeline(config)
    assert "not compiled for the Edge TPU" in err.value.message and "blazeface-short" in err.value.message


def test_external_delegate_that_is_not_a_delegate_is_refused_without_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    config = DetectorConfig(delegate=DelegateConfig(kind="external", library="libm.so.6"), pose="off")
    with pytest.raises(AcceleratorError) as err:
        build_pipeline(config)
    assert "not a TFLite delegate" in err.value.message
    assert "Traceback" not in capfd.readouterr().err


def test_external_delegate_missing_library(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "libvx_delegate.so"
    with pytest.raises(AcceleratorError) as err:
        build_pipeline(DetectorConfig(delegate=DelegateConfig(kind="external", library=str(missing)), pose="off"))
    assert str(missing) in err.value.message
    assert "Traceback" not in capfd.readouterr().err


def test_auto_without_a_coral_runs_on_the_cpu_and_says_why() -> None:
    runner, spec, selection = open_detector_runner(DetectorConfig(pose="off"), load_manifest(), load_runtime())
    assert selection.accelerator == "cpu" and spec.name == "blazeface-full"
    assert any("no Edge TPU" in note for note in selection.notes)


def test_edgetpu_compiled_model_on_the_cpu_is_refused(shared_models: Path) -> None:
    with pytest.raises(ModelError) as err:
        cpu_runner(load_runtime(), shared_models / "face-detector-quantized_edgetpu.tflite", 1)
    assert "compiled for the Edge TPU" in err.value.message


@pytest.mark.parametrize("bad, where", [
    (dict(kind="gpu"), "[detector] delegate"),
    (dict(threads=0), "[detector] threads"),
    (dict(kind="external"), "[detector] delegate_library"),
    (dict(device="usb0"), "[detector] device"),
    (dict(device="pci:x"), "[detector] device"),
])
def test_bad_delegate_settings_name_the_setting(bad: dict, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        DelegateConfig(**bad)
    assert err.value.where == where


def test_coral_discovery_reads_usb_ids_and_apex_nodes(tmp_path: Path) -> None:
    for n, (vendor, product) in enumerate([("1d6b", "0002"), ("18d1", "9302"), ("1a6e", "089a")]):
        dev = tmp_path / f"sys/bus/usb/devices/1-{n}"
        dev.mkdir(parents=True)
        (dev / "idVendor").write_text(vendor + "\n")
        (dev / "idProduct").write_text(product + "\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/apex_0").write_text("")
    assert edgetpu_devices(tmp_path) == ["usb:0", "usb:1", "pci:0"]
    assert edgetpu_devices(tmp_path / "empty") == []


def test_missing_library_is_detected_before_load_delegate() -> None:
    assert "cannot load" in (library_problem("libedgetpu-does-not-exist.so.1") or "")


def test_uint8_input_whose_quantisation_undoes_the_normalisation_takes_pixels_as_they_are() -> None:
    # The Edge TPU BlazeFace: uint8 input, scale 1/127.5, zero point 127, model range [-1, 1].
    codec = TensorCodec(np.dtype(np.uint8), 1 / 127.5, 127)
    transform = PixelTransform.for_input(2 / 255, -1.0, codec)
    assert transform.identity
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    out = np.zeros_like(pixels)
    transform.apply(pixels, out)
    assert (out == pixels).all()


def test_int8_input_is_quantised_from_the_tensor_parameters(shared_models: Path) -> None:
    # MobileFaceNet int8: scale 1/255, zero point -128, real range [0, 1].
    runner = cpu_runner(load_runtime(), shared_models / "mobilefacenet_int8.tflite", 1)
    assert runner.input_codec.quantised and runner.input_codec.dtype == np.int8
    transform = runner.pixel_transform(1 / 255, 0.0)
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    out = np.zeros((1, 1, 3), np.int8)
    transform.apply(pixels, out)
    assert out.tolist() == [[[-128, 0, 127]]]
    outputs = runner.run_pixels(np.full((112, 112, 3), 128, np.uint8), transform)
    assert outputs[0].dtype == np.float32 and outputs[0].shape == (1, 128)  # dequantised with scale 1/128
    assert np.abs(outputs[0]).max() <= 1.0


def test_float_model_output_passes_through_unchanged() -> None:
    codec = TensorCodec(np.dtype(np.float32), 0.0, 0)
    raw = np.array([1.5, -2.0], np.float32)
    assert codec.decode(raw) is raw


def test_auto_tries_a_named_npu_delegate_then_falls_back_to_the_cpu_and_says_why(capfd: pytest.CaptureFixture[str]) -> None:
    config = DetectorConfig(delegate=DelegateConfig(kind="auto", library="libm.so.6"), pose="off")
    runner, spec, selection = open_detector_runner(config, load_manifest(), load_runtime())
    assert selection.accelerator == "cpu"
    assert any("external delegate unusable" in note and "not a TFLite delegate" in note for note in selection.notes)
    assert "Traceback" not in capfd.readouterr().err
