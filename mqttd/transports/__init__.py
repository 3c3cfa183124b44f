"""
What may lie between a listener's socket and L{mqttd.protocol.MQTTServerProtocol}: TLS managed by
mqttd (L{mqttd.transports.tls}) and WebSocket (L{mqttd.transports.websocket}).
"""
