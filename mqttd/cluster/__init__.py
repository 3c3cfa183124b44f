"""
Scale-out: N mqttd nodes sharing one Redis serve as one broker (see docs/cluster.md).

Imported only for a configuration with a C{[cluster]} section; this package's own
C{__init__} imports nothing, so that reading the configuration (L{mqttd.cluster.config}) never
loads the Redis client.
"""
