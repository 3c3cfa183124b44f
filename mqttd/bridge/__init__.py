"""
Bridges to other brokers: C{[bridge:NAME]} sections (L{config}), an outbound MQTT client on the
codec (L{client}), and the bridge itself, a local session plus that client (L{bridge}).
"""
