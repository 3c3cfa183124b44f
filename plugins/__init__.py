"""
The plugins shipped with mqttd (authentication, authorisation, durable stores, ...), one module
each; the plugins issue fills this package.

The directory is C{plugins/} in the source tree but installs as C{mqttd.plugins}: a top-level
package called C{plugins} in site-packages would collide with any other project that made the
same choice.
"""
