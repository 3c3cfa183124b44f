"""
WebSocket frames (RFC 6455 section 5) on the server's side of an upgraded connection, sans-IO.

wsproto, which still does the upgrade (mqttd.transports.websocket), parses frames with a
generator per read, a L{Frame} object and an event object per frame, and a buffer that copies what
it consumes; unmasking is a big-integer XOR per frame.  In S1 over WebSocket (8 publishers, 64-byte
payloads) that was ~11 % of the broker's CPU with 50 MQTT packets to a frame (bench/transports.py)
and, with a frame per packet as MQTT.js and paho send them, more than the MQTT work itself (see
bench/wsframes.py).  Here a read's frames are cut out by one loop over the bytes, the binary
payloads of a run of frames are unmasked by a single XOR over their concatenation, and a frame's
payload is handed on as it arrives, so a frame announced as huge is never buffered: MQTT's own
limits (the decoder's maximum packet size) bound what the broker keeps.
"""

from __future__ import annotations

from typing import Final

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

# Close codes (RFC 6455 section 7.4.1).
NORMAL_CLOSURE: Final = 1000
PROTOCOL_ERROR: Final = 1002
UNSUPPORTED_DATA: Final = 1003
INVALID_PAYLOAD: Final = 1007

# Codes a peer may send below the ranges for libraries and applications (3000-4999): those of
# RFC 6455 section 7.4.1 meant for the wire, and 1012-1014, registered with IANA since.  1004,
# 1005, 1006 and 1015 are reserved or only reported locally.
_REGISTERED_CLOSE_CODES: Final = frozenset(
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]
)

MAX_CONTROL_PAYLOAD: Final = 125


class FrameError(Exception):
    """The peer broke RFC 6455: the connection is to be closed with C{code}."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Control:
    """A control frame received whole: C{opcode} (CLOSE, PING or PONG) and its unmasked payload."""

    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: int, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """C{data} XORed with the 4-byte C{mask} repeated from its first byte."""
    n = len(data)
    if not n:
        return b""
    keys = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def closeCode(payload: bytes) -> int | None:
    """
    The status code of a received CLOSE frame's C{payload}, None when it has none; L{FrameError}
    for a code a peer may not send or a reason that is not UTF-8 (section 5.5.1).
    """
    if not payload:
        return None
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in _REGISTERED_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return code


def closeFrame(code: int | None, reason: str = "") -> bytes:
    """A server's CLOSE frame (no payload when C{code} is None); C{reason} cut to fit."""
    if code is None:
        return b"\x88\x00"
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    # A cut may have split a character: drop what is left of it.
    payload = payload[:2] + payload[2:].decode("utf-8", "ignore").encode("utf-8")
    return bytes((0x88, len(payload))) + payload


def controlFrame(opcode: int, payload: bytes) -> bytes:
    """A server's unmasked control frame (PING or PONG) of at most 125 bytes of C{payload}."""
    return bytes((0x80 | opcode, len(payload))) + payload


def binaryHeader(n: int) -> bytes:
    """The header of a server's single, final, unmasked binary frame of C{n} bytes."""
    if n < 126:
        return bytes((0x82, n))
    if n < 65536:
        return b"\x82\x7e" + n.to_bytes(2, "big")
    return b"\x82\x7f" + n.to_bytes(8, "big")


class FrameDecoder:
    """
    The frames a client sends, read as they come: L{feed} returns, in order, the bytes of the
    binary messages (each run of data frames as one C{bytes}, whatever the frame boundaries:
    the MQTT stream inside does not care [MQTT-6.0.0-2]) and the L{Control} frames between
    them; a frame that breaks RFC 6455 ends the list as a L{FrameError}, and the decoder
    returns nothing after it.
    """

    __slots__ = ("_failed", "_fragmented", "_mask", "_pending", "_remaining")

    def __init__(self) -> None:
        # The start of a frame whose header (or, for a control frame, payload) is incomplete.
        self._pending = b""
        # Payload bytes of the current data frame still to come, and its mask from there on.
        self._remaining = 0
        self._mask = b""
        # Inside a binary message whose final frame has not come yet.
        self._fragmented = False
        self._failed = False

    def feed(self, data: bytes) -> list[bytes | Control | FrameError]:
        if self._failed:
            return []
        if self._pending:
            data = self._pending + data
            self._pending = b""
        events: list[bytes | Control | FrameError] = []
        payloads: list[bytes] = []
        masks: list[bytes] = []
        end = len(data)
        pos = 0
        remaining = self._remaining
        if remaining:
            # The rest of a frame begun in an earlier read.
            pos = remaining if remaining <= end else end
            mask = self._mask
            payloads.append(data[:pos])
            masks.append((mask * ((pos + 3) >> 2))[:pos])
            remaining -= pos
            self._remaining = remaining
            if remaining:
                shift = pos & 3
                self._mask = mask[shift:] + mask[:shift]
        fragmented = self._fragmented
        try:
            while end - pos >= 6:
                first = data[pos]
                second = data[pos + 1]
                if first == 0x82 and 0x80 <= second < 0xFE and not fragmented:
                    # The common frame, a whole binary message of at most 125 bytes, masked:
                    # MQTT.js and paho send most packets so.
                    start = pos + 6
                    stop = start + second - 0x80
                    if stop <= end:
                        payloads.append(data[start:stop])
                        masks.append(
                            (data[pos + 2 : start] * ((second - 125) >> 2))[: second - 0x80]
                        )
                        pos = stop
                        continue
                if first & 0x70:
                    raise FrameError(PROTOCOL_ERROR, "reserved bits set without an extension")
                if not second & 0x80:
                    raise FrameError(PROTOCOL_ERROR, "a client's frames must be masked")
                opcode = first & 0x0F
                length = second & 0x7F
                start = pos + 6
                if length == 126:
                    start += 2
                    if end < start:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                    if length < 126:
                        raise FrameError(PROTOCOL_ERROR, "frame length not in its shortest form")
                elif length == 127:
                    start += 8
                    if end < start:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    if length < 65536 or length >> 63:
                        raise FrameError(PROTOCOL_ERROR, "frame length not in its shortest form")
                mask = data[start - 4 : start]
                if opcode == BINARY or opcode == CONTINUATION:
                    if opcode == BINARY:
                        if fragmented:
                            raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
                    elif not fragmented:
                        raise FrameError(PROTOCOL_ERROR, "continuation frame outside a message")
                    fragmented = not first & 0x80
                    stop = start + length
                    if stop > end:
                        # Handed on as far as it came; the rest follows in later reads.
                        got = end - start
                        payloads.append(data[start:])
                        masks.append((mask * ((got + 3) >> 2))[:got])
                        self._remaining = stop - end
                        shift = got & 3
                        self._mask = mask[shift:] + mask[:shift]
                        pos = end
                        break
                    payloads.append(data[start:stop])
                    masks.append((mask * ((length + 3) >> 2))[:length])
                    pos = stop
                elif opcode >= CLOSE and opcode <= PONG:
                    if not first & 0x80:
                        raise FrameError(PROTOCOL_ERROR, "fragmented control frame")
                    if length > MAX_CONTROL_PAYLOAD:
                        raise FrameError(PROTOCOL_ERROR, "control frame longer than 125 bytes")
                    stop = start + length
                    if stop > end:
                        break
                    if payloads:
                        events.append(_unmaskRun(payloads, masks))
                        payloads = []
                        masks = []
                    events.append(Control(opcode, unmask(data[start:stop], mask)))
                    pos = stop
                    if opcode == CLOSE:
                        # Nothing a client sends after its CLOSE counts (section 5.5.1).
                        self._failed = True
                        return events
                elif opcode == TEXT:
                    if fragmented:
                        raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
                    # [MQTT-6.0.0-1]
                    raise FrameError(UNSUPPORTED_DATA, "MQTT travels in binary frames")
                else:
                    raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        except FrameError as e:
            self._failed = True
            if payloads:
                events.append(_unmaskRun(payloads, masks))
            events.append(e)
            return events
        finally:
            self._fragmented = fragmented
        if pos < end:
            self._pending = data[pos:]
        if payloads:
            events.append(_unmaskRun(payloads, masks))
        return events


def _unmaskRun(payloads: list[bytes], masks: list[bytes]) -> bytes:
    """Several frames' payloads unmasked by one XOR over their concatenation."""
    return _xor(b"".join(payloads), b"".join(masks))


def _xor(data: bytes, keys: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")
