"""
Virtual groups and direct messages: recipients the server holds, so that a client reaches a group
or one session without anyone having subscribed.

A message published to C{$group/NAME/REST} goes once to the session of every member of group
NAME, online or offline (persistent sessions queue it), at the lower of the published QoS and the
member's; one published to C{$p2p/CLIENTID/REST} goes to that client's session alone.  Each
delivery passes the receiving client's receive ACL, as any delivery does.  As an authorizer (put
it first in C{[acl] chain}) the plugin lets the members of a group publish to it and abstains for
everyone else, so the next authorizer decides about them.

Groups live in one L{IGroupStore}: the broker's store when it is one (the shipped SQLite store,
C{[store] plugin = sqlite}), else an SQLite file of the plugin's own (C{path}).  They are managed
from C{[plugin:virtual_groups]} (C{group.NAME = ...}, written to the store at every start), from
the control topics C{$CONTROL/mqttd/groups/ACTION} and from C{mqttd groups}; changes made by
another process are picked up within the store's poll interval (C{group_poll_interval} of the
SQLite store, C{poll_interval} here for the plugin's own file).  Plugins named in C{sources} add
groups computed elsewhere (L{IGroupSource}).  See C{docs/virtual-groups.md}.
"""

from __future__ import annotations

from .factory import VirtualGroupsFactory
from .model import (
    CONTROL_PREFIX,
    PUBLISH_POLICIES,
    GroupError,
    checkName,
    describe,
    makeGroup,
    parseMember,
)
from .routing import VirtualGroups
from .store import (
    APPLICATION_ID,
    SCHEMA,
    SQLiteGroupStore,
    openGroupDatabase,
    readGroups,
    writeGroups,
)

__all__ = [
    "APPLICATION_ID",
    "CONTROL_PREFIX",
    "PUBLISH_POLICIES",
    "SCHEMA",
    "GroupError",
    "SQLiteGroupStore",
    "VirtualGroups",
    "VirtualGroupsFactory",
    "checkName",
    "describe",
    "makeGroup",
    "openGroupDatabase",
    "parseMember",
    "readGroups",
    "virtualGroups",
    "writeGroups",
]

# The plugin Twisted finds (twisted.plugin caches it under this attribute's name).
virtualGroups = VirtualGroupsFactory()
