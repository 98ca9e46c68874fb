"""The service in a subprocess that prints every detections seq it hands out: the tests' record of what it published.

Why: durability tests SIGKILL the service or fill its disk, so what it
"published" must be known from outside it, whether or not a message reached
the disk or the broker. The real pipeline runs on a still photograph with
one face at about 30 frames a second, one message a frame (the per-frame stream), with the real outbox and the real
publisher (mutual TLS, quick reconnects). `extra` is code run just before
the service starts (a test's command thread, for example, which answers with `say`); it prints
`ready` and then the seqs, one a line.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from support.mosquitto import BrokerUnderTest

REPO = Path(__file__).resolve().parents[2]
FRAME_INTERVAL_S = 1 / 30

_SCRIPT = textwrap.dedent("""
    import itertools, logging, sys, threading, time
    from pathlib import Path
    sys.path[:0] = [{repo!r}, {tests!r}]
    import skimage.data
    import edge.wire.serialize as serialize
    from edge.app.config import DeviceConfig, HealthConfig, HomeAssistantConfig, ServiceConfig
    from edge.delivery.outbox import OutboxConfig
    from edge.vision.pipeline import DetectorConfig, build_pipeline
    from edge.delivery.publish import MqttConfig
    from edge.sources.camera import CameraConfig
    from edge.app.service import Service, status_for
    from edge.wire.rate import PER_FRAME_STREAM

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    made = serialize.detections

    def say(line):
        # One write per line: print() writes the text and its newline apart, so a line printed by another
        # thread (a test's command reply) could land between them and both lines would be lost.
        sys.stdout.write(f"{{line}}\\n")
        sys.stdout.flush()

    def announced(device, seq, *rest):
        say(seq)  # handed out: the test's record of what the device published
        return made(device, seq, *rest)

    serialize.detections = announced
    config = ServiceConfig(DeviceConfig("cam-a", Path({state!r})), MqttConfig.from_mapping({mqtt!r}),
                           OutboxConfig(durability={durability!r}), HealthConfig(30.0), HomeAssistantConfig(),
                           CameraConfig(), DetectorConfig(), None, detections=PER_FRAME_STREAM)
    pipeline = build_pipeline(config.detector)
    face = skimage.data.astronaut()

    class Still:
        def __init__(self, number):
            self.image, self.number, self.capture_time = face, number, time.time()

    def endless():
        for n in itertools.count(1):
            time.sleep({interval!r})
            yield Still(n)

    service = Service(config, status_for(pipeline))
    service.install_signal_handlers()
""")
_START = textwrap.dedent("""
    say("ready")
    service.run(endless(), pipeline)
""")


def announcing_service(mosquitto: BrokerUnderTest, state: Path, durability: str, extra: str = "") -> str:
    """The script (for `python -c`) of device cam-a against the test broker, with its state in `state`."""
    cred = mosquitto.pki.clients["cam-a"]
    mqtt = {"host": mosquitto.broker.host, "port": mosquitto.broker.port, "ca": str(mosquitto.pki.ca),
            "cert": str(cred.cert), "key": str(cred.key), "backoff_min_s": 0.1, "backoff_max_s": 0.5}
    head = _SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), state=str(state), mqtt=mqtt,
                          durability=durability, interval=FRAME_INTERVAL_S)
    return head + textwrap.dedent(extra) + _START
