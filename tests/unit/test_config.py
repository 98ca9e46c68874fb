"""One configuration system: every section and every flag by one schema, one error style, one device-id rule."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.app.config import (
    DeviceConfig,
    HealthConfig,
    HomeAssistantConfig,
    ServiceConfig,
    check_certificate_names,
    from_document,
    load,
)
from edge.common.errors import ConfigError, EdgeError
from edge.common.text import fold
from edge.delivery.outbox import OutboxConfig
from edge.delivery.publish import MqttConfig
from edge.demo.broker import make_throwaway_pki
from edge.policy.config import PolicyConfig
from edge.sources.camera import CameraConfig
from edge.trust.grant import GrantError, check_device_id
from edge.trust.tags import fold_tag
from edge.vision.pipeline import DetectorConfig
from edge.vision.runtime import DelegateConfig
from edge.wire.rate import RateConfig
from support.data import REPO
from support.pki import Pki, provision

MQTT = {"ca": "ca.pem", "cert": "device.pem", "key": "device-key.pem"}
POLICY = {"state_dir": "/var/lib/x", "trust_anchor": "a.pem", "certificate": "c.pem"}
SECTIONS: dict[str, tuple[Any, dict[str, Any]]] = {
    "device": (DeviceConfig, {"id": "cam-a", "state_dir": "/var/lib/x"}),
    "camera": (CameraConfig, {}),
    "detector": (DetectorConfig, {}),
    "policy": (PolicyConfig, POLICY),
    "mqtt": (MqttConfig, MQTT),
    "outbox": (OutboxConfig, {}),
    "health": (HealthConfig, {}),
    "homeassistant": (HomeAssistantConfig, {}),
    "detections": (RateConfig, {}),
}
# configuration [section] key: <value> <what is wrong>  /  what to do: expected <what a good value is>
ONE_STYLE = re.compile(r"^configuration \[(\w+)\] (\w+): (.+)\n  what to do: expected .+", re.S)
# --flag <text>: <what is wrong>  /  what to do: expected <what a good value is>
FLAG_STYLE = re.compile(r"^edge-camera: (--[\w-]+) ?(\S*): (.+)\n  what to do: expected .+", re.S)


def edge_camera(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.app.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_refuses_an_unknown_key_naming_it_and_the_known_ones(section: str) -> None:
    cls, good = SECTIONS[section]
    cls.from_mapping(good)
    with pytest.raises(ConfigError) as err:
        cls.from_mapping({**good, "colour": "red"})
    assert err.value.where == f"[{section}] colour"
    assert ONE_STYLE.match(str(err.value)), str(err.value)
    assert "unknown key" in err.value.message and "'red'" in err.value.message
    assert all(key in (err.value.hint or "") for key in good)


def test_an_unknown_section_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        from_document({"device": SECTIONS["device"][1], "mqtt": MQTT, "camra": {"fps": 5}})
    assert err.value.where == "[camra]" and "[camera]" in (err.value.hint or "")


@pytest.mark.parametrize("section, data, key, value", [
    ("camera", {"fps": -3}, "fps", "-3"),
    ("camera", {"width": "640"}, "width", "'640'"),
    ("camera", {"loop": 1}, "loop", "1"),
    ("detector", {"threads": 0}, "threads", "0"),
    ("detector", {"tiled": "yes"}, "tiled", "'yes'"),
    ("detector", {"score_threshold": 1.5}, "score_threshold", "1.5"),
    ("detector", {"delegate": "tpu"}, "delegate", "'tpu'"),
    ("detector", {"tile_size": 256, "tile_overlap": 300}, "tile_overlap", "300"),
    ("detector", {"pipelined": True}, "pipelined", "true"),  # needs delegate = "cpu": nothing to follow
    ("detector", {"pipelined": True, "delegate": "cpu", "tiled": True}, "pipelined", "true"),
    ("detector", {"model_dirs": "/opt/models"}, "model_dirs", "'/opt/models'"),
    ("mqtt", {**MQTT, "port": 70000}, "port", "70000"),
    ("mqtt", {**MQTT, "backoff_min_s": 9.5, "backoff_max_s": 2}, "backoff_min_s", "9.5"),
    ("mqtt", {**MQTT, "cert": ""}, "cert", "''"),
    ("outbox", {"max_batch": 1.5}, "max_batch", "1.5"),
    ("health", {"interval_s": True}, "interval_s", "true"),
    ("homeassistant", {"prefix": "home/#"}, "prefix", "'home/#'"),
    ("device", {"id": "Cam_1", "state_dir": "/x"}, "id", "'Cam_1'"),
    ("policy", {**POLICY, "crl": 3}, "crl", "3"),
])
def test_every_error_names_the_key_the_value_and_what_was_expected_in_one_style(
        section: str, data: dict[str, Any], key: str, value: str) -> None:
    cls, _good = SECTIONS[section]
    with pytest.raises(ConfigError) as err:
        cls.from_mapping(data)
    match = ONE_STYLE.match(str(err.value))
    assert match, str(err.value)
    assert (match[1], match[2]) == (section, key)
    assert match[3].startswith(f"{value} ")
    assert err.value.exit_code == 2


def test_a_missing_required_key_is_named() -> None:
    for cls, data, key in ((DeviceConfig, {"id": "cam-a"}, "state_dir"), (MqttConfig, {"ca": "a", "cert": "b"}, "key"),
                           (PolicyConfig, {"state_dir": "/s", "certificate": "c"}, "trust_anchor")):
        with pytest.raises(ConfigError) as err:
            cls.from_mapping(data)
        assert str(err.value).startswith(f"configuration [{cls.SECTION}] {key}: is missing\n  what to do: expected")


def test_code_that_builds_a_section_meets_the_same_checks() -> None:
    with pytest.raises(ConfigError, match=r"\[camera\] fps: -1.0 is below 0"):
        CameraConfig(fps=-1.0)
    with pytest.raises(ConfigError, match=r"\[detector\] threads: 0 is below 1"):
        DelegateConfig(threads=0)
    with pytest.raises(ConfigError, match=r"\[outbox\] max_messages: 0 is not above 0"):
        OutboxConfig(max_messages=0)


def test_detector_settings_keep_their_defaults_and_types() -> None:
    config = DetectorConfig.from_mapping({"threads": 3, "score_threshold": 0.5, "delegate_options": {"cores": 2}})
    assert config == DetectorConfig(delegate=DelegateConfig(threads=3, options={"cores": "2"}), score_threshold=0.5)
    assert DetectorConfig.from_mapping({"tile_score_threshold": 0.75}).tile_score_threshold == 0.75
    assert CameraConfig.from_mapping({"fps": 15}).fps == 15.0


@pytest.mark.parametrize("args, flag, text", [
    (("detect", "--threads", "0"), "--threads", "0"),
    (("detect", "--threads", "two"), "--threads", "two"),
    (("detect", "--threshold", "2"), "--threshold", "2"),
    (("detect", "--pose", "mesh"), "--pose", "mesh"),
    (("detect", "--delegate", "gpu"), "--delegate", "gpu"),
    (("detect", "--delegate", "external"), "--delegate-library", ""),
    (("bench", "--frames", "0"), "--frames", "0"),
    (("run", "--seconds", "-1", "--config", "/nonexistent.toml"), "--seconds", "-1"),
    (("run", "--frames", "x", "--config", "/nonexistent.toml"), "--frames", "x"),
    (("demo", "--seconds", "0"), "--seconds", "0"),
])
def test_flags_share_the_settings_checks_and_name_the_flag(args: tuple[str, ...], flag: str, text: str) -> None:
    result = edge_camera(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "configuration [" not in result.stderr
    match = FLAG_STYLE.match(result.stderr)
    assert match, result.stderr
    assert (match[1], match[2]) == (flag, text)


def test_a_flag_and_its_setting_expect_the_same() -> None:
    from edge.app.cli import build_parser, detector_config

    args = build_parser().parse_args(["detect", "--threads", "0"])
    with pytest.raises(EdgeError) as by_flag:
        detector_config(args)
    with pytest.raises(ConfigError) as by_key:
        DetectorConfig.from_mapping({"threads": 0})
    assert by_flag.value.hint == by_key.value.hint
    assert str(by_flag.value).startswith("--threads 0: is below 1")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,70}", fullmatch=True), st.text(max_size=70),
                 st.sampled_from(["fleet", "Cam-1", "cam_1", "-cam", "a" * 63, "a" * 64, "cam-lobby-1"])))
def test_the_configured_device_id_obeys_the_grant_rule_exactly(device_id: str) -> None:
    try:
        check_device_id(device_id)
        grant_accepts = True
    except GrantError:
        grant_accepts = False
    try:
        DeviceConfig.from_mapping({"id": device_id, "state_dir": "/x"})
        config_accepts = True
    except ConfigError:
        config_accepts = False
    assert config_accepts == grant_accepts


def test_fleet_is_reserved_by_the_one_rule() -> None:
    with pytest.raises(GrantError, match="reserved"):
        check_device_id("fleet")
    with pytest.raises(ConfigError, match="reserved"):
        DeviceConfig.from_mapping({"id": "fleet", "state_dir": "/x"})


def _service_config(device_id: str, mqtt_cert: Path, policy: PolicyConfig | None = None) -> ServiceConfig:
    mqtt = MqttConfig.from_mapping({"ca": "ca.pem", "cert": str(mqtt_cert), "key": "k.pem"})
    return ServiceConfig(DeviceConfig(device_id, Path("/x")), mqtt, OutboxConfig(), HealthConfig(),
                         HomeAssistantConfig(), CameraConfig(), DetectorConfig(), policy)


def test_the_configured_id_must_be_the_device_certificates_common_name(tmp_path: Path) -> None:
    pki = make_throwaway_pki(tmp_path / "pki", ("cam-a",))
    cert = pki.clients["cam-a"].cert
    check_certificate_names(_service_config("cam-a", cert))
    with pytest.raises(ConfigError) as err:
        check_certificate_names(_service_config("cam-b", cert))
    assert err.value.where == "[device] id" and err.value.exit_code == 2
    assert "'cam-b'" in err.value.message and "'cam-a'" in err.value.message and "[mqtt] cert" in err.value.message


def test_the_policy_certificate_must_name_the_configured_device_too(tmp_path: Path) -> None:
    device = provision(tmp_path, Pki.create(), device_id="cam-1")
    mqtt_cert = device.state_dir / "device.pem"
    check_certificate_names(_service_config("cam-1", mqtt_cert, device.config))
    other = make_throwaway_pki(tmp_path / "pki", ("cam-2",)).clients["cam-2"].cert
    with pytest.raises(ConfigError, match=r"'cam-2' is not the device certificate's common name 'cam-1' "
                                          r"\(\[policy\] certificate"):
        check_certificate_names(_service_config("cam-2", other, device.config))
    (device.state_dir / "device.pem").unlink()  # unreadable policy material: the gate says why, detection runs
    check_certificate_names(_service_config("cam-2", other, device.config))


def test_run_stops_at_start_up_when_the_id_is_not_the_certificates(tmp_path: Path) -> None:
    pki = make_throwaway_pki(tmp_path / "pki", ("cam-a",))
    config = tmp_path / "edge-camera.toml"
    config.write_text(textwrap.dedent(f"""
        [device]
        id = "cam-b"
        state_dir = "{tmp_path / 'state'}"
        [mqtt]
        ca = "{pki.ca}"
        cert = "{pki.clients['cam-a'].cert}"
        key = "{pki.clients['cam-a'].key}"
    """))
    result = edge_camera("run", "--config", str(config), timeout=60)
    # 78 (EX_CONFIG) since issue 10: a permanent error under `run`, which systemd does not restart (was 2).
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert "configuration [device] id: 'cam-b' is not the device certificate's common name 'cam-a'" in result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was opened


def test_tags_and_retired_terms_fold_with_one_function() -> None:
    from edge.app.config import refuse_retired_attributes

    for written in ("Facial_Hair", "ＦＡＣＩＡＬ－ＨＡＩＲ", "facial hair", "facial.hair"):
        assert fold_tag(written) == fold(written) == "facial-hair"
        with pytest.raises(ConfigError, match="responsible-use rule"):
            refuse_retired_attributes({"detector": {"outputs": [written]}})


def test_no_any_between_configuration_service_policy_and_pipeline() -> None:
    from edge.app import service

    assert "Any" not in " ".join(ServiceConfig.__annotations__.values())
    for function in (service.status_for, service.model_input_size, service.attach_policy, service.run_from_config):
        assert "Any" not in " ".join(str(v) for v in function.__annotations__.values()), function


def test_policy_and_audit_verify_do_not_import_the_vision_stack(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from edge.app.cli import main
        main(["policy", "--config", {str(tmp_path / "none.toml")!r}])
        main(["audit", "verify", "--log", {str(tmp_path / "none.log")!r}])
        try:
            main(["policy", "--help"])
        except SystemExit:
            pass
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("numpy", "cv2", "paho") or m.startswith(("edge.vision", "edge.sources")))
        print(heavy)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_exit_codes_in_the_command_line_docstring_match_the_readme() -> None:
    import edge.app.cli

    def codes(text: str) -> dict[int, str]:
        sentence = text.split("Exit codes", 1)[1].split(":", 1)[1].split("interrupted", 1)[0] + "interrupted"
        sentence = " ".join(sentence.split())
        return {int(n): words.strip(" ;.") for n, words in re.findall(r"(\d+) ([^;0-9]+)", sentence)}

    readme = codes((REPO / "README.md").read_text(encoding="utf-8"))
    assert sorted(readme) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 78, 130]
    assert codes(edge.app.cli.__doc__ or "") == readme


def test_the_example_configuration_is_valid_and_names_what_edge_provision_writes() -> None:
    from edge.trust.device_key import DEVICE_KEY_FILE
    from provisioning.cli import BUNDLE_ANCHOR, BUNDLE_BROKER_CA, BUNDLE_CERT, BUNDLE_CRL

    config = load(REPO / "systemd" / "edge-camera.toml")
    assert config.policy is not None
    state = config.policy.state_dir
    assert config.policy.certificate == state / BUNDLE_CERT
    assert config.policy.trust_anchor == state / BUNDLE_ANCHOR
    assert config.policy.crl == state / BUNDLE_CRL
    assert config.policy.key == state / DEVICE_KEY_FILE
    assert (config.mqtt.cert, config.mqtt.key) == (config.policy.certificate, config.policy.key)
    assert config.mqtt.ca == state / BUNDLE_BROKER_CA
    assert config.device.state_dir == state
