"""
MQTT-SN 1.2: a sans-IO codec (L{mqttd.sn.codec}) and a UDP gateway (L{mqttd.sn.gateway}) that
makes every MQTT-SN client a session of the broker core.
"""
