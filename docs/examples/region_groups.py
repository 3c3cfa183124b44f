"""
An example L{IGroupSource} for mqttd's virtual groups: every user whose C{region} column in an
application's own SQLite database is X is a member of the group C{region-X}.  Nothing is stored
in mqttd; a user who moves region is in the new group after the next refresh.

    # Where this file is copied.
    [plugins]
    paths = /etc/mqttd/plugins

    [selectors]
    chain = virtual_groups

    # A table users (username TEXT, region TEXT), re-read every refresh seconds.
    [plugin:region_groups]
    database = /srv/app/users.db
    refresh = 30

    [plugin:virtual_groups]
    sources = region_groups

Comments go on lines of their own: after a value, "; ..." would be part of the value.
"""

import sqlite3
from contextlib import closing

from twisted.internet.threads import deferToThreadPool
from twisted.plugin import IPlugin
from zope.interface import implementer

from mqttd.interfaces import Group, IGroupSource, IPluginFactory, PluginConfigError


def readRegions(path):
    """{region: [username, ...]}; run on a thread, as a database may be slow."""
    regions = {}
    with closing(sqlite3.connect(path)) as db:
        for username, region in db.execute("SELECT username, region FROM users"):
            regions.setdefault(region, []).append(username)
    return regions


@implementer(IGroupSource)
class RegionGroups:
    def __init__(self, reactor, path, refresh):
        self.reactor = reactor
        self.path = path
        self.refresh = refresh
        self.watchers = []
        self.groups = {}
        self.loaded(readRegions(path))  # at start-up, blocking is fine
        self.nextRead = reactor.seconds() + refresh

    def group(self, name):
        # Called per message: answer from memory, and start a read in the background when due.
        if self.reactor.seconds() >= self.nextRead:
            self.nextRead = self.reactor.seconds() + self.refresh
            pool = self.reactor.getThreadPool()
            deferToThreadPool(self.reactor, pool, readRegions, self.path).addCallback(self.loaded)
        return self.groups.get(name)

    def groupNames(self):
        return self.groups.keys()

    def watch(self, changed):
        self.watchers.append(changed)

    def loaded(self, regions):
        groups = {}
        for region, users in regions.items():
            name = f"region-{region}"
            group = Group(name, {user: 1 for user in users}, byUsername=True)
            # Keep an unchanged group's object: the broker prepares its recipients once per object.
            groups[name] = self.groups.get(name) if self.groups.get(name) == group else group
        if groups != self.groups:
            self.groups = groups
            for changed in self.watchers:
                changed()


@implementer(IPlugin, IPluginFactory)
class RegionGroupsFactory:
    name = "region_groups"

    def build(self, options, context):
        if "database" not in options:
            raise PluginConfigError("database", "required")
        try:
            refresh = float(options.get("refresh", "30"))
        except ValueError:
            raise PluginConfigError("refresh", "expected seconds") from None
        return RegionGroups(context.reactor, context.path(options["database"]), refresh)


regionGroups = RegionGroupsFactory()
