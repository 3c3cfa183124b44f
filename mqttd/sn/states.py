"""
The states of an MQTT-SN client at its gateway (section 6): connecting (the will exchange, then
authentication), active, asleep or awake (a sleeping client, section 6.14), closed.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    WILLTOPIC = "awaiting WILLTOPIC"
    WILLMSG = "awaiting WILLMSG"
    AUTHENTICATING = "authenticating"
    ACTIVE = "active"
    ASLEEP = "asleep"
    AWAKE = "awake"
    CLOSED = "closed"


CONNECTING = (State.WILLTOPIC, State.WILLMSG, State.AUTHENTICATING)
