"""
Makes C{twistd mqttd} available; twistd imports every module here on each run, so this one only
names where the real code lives.
"""

from twisted.application.service import ServiceMaker

mqttd = ServiceMaker(
    "mqttd",
    "mqttd.tap",
    "An MQTT broker (MQTT 3.1 and 3.1.1) configured by an ini file",
    "mqttd",
)
