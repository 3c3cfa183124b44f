"""
What may lie between a listener's socket and L{mqttd.protocol.MQTTServerProtocol}: the lean TCP
transport of C{tcp:} listeners (L{mqttd.transports.tcp}), TLS managed by mqttd
(L{mqttd.transports.tls}) and WebSocket (L{mqttd.transports.websocket}).
"""


class TLSFileError(Exception):
    """
    A TLS file cannot be used.  Here, not in L{mqttd.transports.tls}, so that catching it does
    not import TLS (see L{mqttd.footprint}).

    @ivar key: the listener key that named the file.
    @ivar why: what is wrong, including the path, for a human.
    """

    def __init__(self, key: str, why: str) -> None:
        super().__init__(key, why)
        self.key = key
        self.why = why
