"""mqttd: an MQTT broker framework on Twisted whose every policy is a plugin."""

__version__ = "0.1.0"
