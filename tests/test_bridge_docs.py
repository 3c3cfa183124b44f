"""
docs/bridge.md's two-broker example, run as written: the site's C{mqttd.ini} loaded and built
into the broker service exactly as C{twistd mqttd} does, bridged to a mosquitto started with the
cloud's configuration; only the two port numbers are replaced by free ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mqttd.config import load_config
from mqttd.service import makeBrokerService
from tests import e2e
from tests.mosquitto import Start, freePort, mosquittos

__all__ = ["mosquittos"]

DOC = Path(__file__).parent.parent / "docs" / "bridge.md"


def _block(text: str, after: str, language: str) -> str:
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no ```{language} block after {after!r} in {DOC}"
    return match.group(1)


def test_docsExampleRuns(tmp_path: Path, mosquittos: Start, twisted_reactor: None) -> None:
    """
    The site mqttd forwards site1/sensors/t to the cloud mosquitto as plants/site1/sensors/t,
    and the cloud's plants/site1/commands/fan arrives at the site as site1/commands/fan, both at
    QoS 1, as the document's shell session shows.
    """
    text = DOC.read_text()
    section = text[text.index("## mqttd as a bridge") :]
    ini = _block(section, "the site's `mqttd.ini`", "ini")
    cloudConf = _block(section, "the cloud broker", "")
    assert cloudConf.split() == "listener 1884 127.0.0.1 allow_anonymous true".split()

    cloud = mosquittos("cloud")
    sitePort = freePort()
    site = tmp_path / "mqttd.ini"
    site.write_text(
        ini.replace("tcp:1883:", f"tcp:{sitePort}:").replace(
            "127.0.0.1:1884", f"127.0.0.1:{cloud.port}"
        )
    )
    config = load_config(str(site))
    e2e.REACTOR.takeErrors()
    service: Any = e2e.in_reactor(lambda: makeBrokerService(config, e2e.reactor))
    e2e.in_reactor(service.startService)
    try:
        (bridge,) = [s.bridge for s in service if hasattr(s, "bridge")]
        e2e.wait_until(lambda: e2e.in_reactor(lambda: bridge.connected), "the bridge linked")
        e2e.wait_until(
            lambda: "Received SUBSCRIBE from site1" in cloud.logText(), "the bridge subscribed"
        )
        cloudSub = e2e.client(cloud.port, "cloud-sub")
        siteSub = e2e.client(sitePort, "site-sub")
        sitePub = e2e.client(sitePort, "site-pub")
        cloudPub = e2e.client(cloud.port, "cloud-pub")
        try:
            cloudSub.subscribe("plants/#")
            sitePub.publish("site1/sensors/t", b"21", qos=1)
            assert [(m.topic, m.payload) for m in cloudSub.wait_for(1)] == [
                ("plants/site1/sensors/t", b"21")
            ]
            siteSub.subscribe("site1/commands/#")
            cloudPub.publish("plants/site1/commands/fan", b"on", qos=1)
            assert [(m.topic, m.payload) for m in siteSub.wait_for(1)] == [
                ("site1/commands/fan", b"on")
            ]
        finally:
            for c in (cloudSub, siteSub, sitePub, cloudPub):
                c.close()
    finally:
        e2e.in_reactor(service.stopService)
    errors = e2e.REACTOR.takeErrors()
    assert not errors, "\n".join(errors)
    # The bridge closed its link with DISCONNECT when the service stopped.
    e2e.wait_until(lambda: "Client site1 disconnected." in cloud.logText(), "a clean disconnect")
