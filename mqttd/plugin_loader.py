"""
Finds plugins with L{twisted.plugin.getPlugins} and builds them from their C{[plugin:NAME]}
sections.

The plugins live in the package C{mqttd.plugins}: installed, that is the C{plugins/} directory of
the source tree (C{package-dir} in C{pyproject.toml}); run from a checkout, where C{mqttd/} has no
C{plugins} subpackage, L{pluginPackage} loads C{plugins/} under that same name, so a plugin imports
and is imported identically in both cases.  The operator's directories (C{[plugins] paths}) are
put on that package's C{__path__}, as C{twisted.plugins} does with L{pluginPackagePaths}: a module
dropped there is found without packaging.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from types import ModuleType
from typing import Any, cast

from twisted.logger import Logger
from twisted.plugin import IPlugin, getCache, getPlugins
from zope.interface import Interface

import mqttd

from .config import Config, ConfigError
from .interfaces import IPluginFactory, PluginConfigError, PluginContext

PACKAGE = "mqttd.plugins"
log = Logger()
# Where a checkout keeps the shipped plugins: next to mqttd/, not inside it.
_SOURCE_PLUGINS = os.path.join(os.path.dirname(os.path.dirname(mqttd.__file__)), "plugins")


def pluginPackage() -> ModuleType:
    """
    The package C{mqttd.plugins}, importing it from the installation or, in a checkout, from
    C{plugins/}.
    """
    module = sys.modules.get(PACKAGE)
    if module is not None:
        return module
    if importlib.util.find_spec(PACKAGE) is not None:
        return importlib.import_module(PACKAGE)
    spec = importlib.util.spec_from_file_location(
        PACKAGE,
        os.path.join(_SOURCE_PLUGINS, "__init__.py"),
        submodule_search_locations=[_SOURCE_PLUGINS],
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot find {PACKAGE}, nor {_SOURCE_PLUGINS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    mqttd.plugins = module  # type: ignore[attr-defined]
    return module


def findPlugins(extraPaths: Sequence[str] = ()) -> Mapping[str, IPluginFactory]:
    """
    Every plugin factory in C{mqttd.plugins} and in the directories C{extraPaths}, by name.

    The package's search path is set, not appended to, on each call, so it always holds the
    shipped directory and exactly the directories asked for.  A plugin module that fails to
    import is logged by Twisted and skipped; its name then shows up as unknown.  Modules are
    imported as their plugins are asked for (see L{FoundPlugins}), so a broker loads the code of
    the plugins its configuration names only.
    """
    package = pluginPackage()
    shipped = package.__dict__.setdefault("_mqttdShippedPath", list(package.__path__))
    extra = [os.path.abspath(p) for p in extraPaths]
    package.__path__ = [*shipped, *(p for p in extra if p not in shipped)]
    return FoundPlugins(package)


class FoundPlugins(Mapping[str, IPluginFactory]):
    """
    Plugin factories by name, imported when first asked for.

    Twisted's plugin cache names each plugin by the module attribute that holds it, and its
    module: a plugin named as either (the shipped ones are, virtual_groups by its module) is
    found by importing that module alone.  Any other name, and listing them all, imports every
    module, as L{getPlugins} does: for a configuration naming virtual_groups that was every
    shipped plugin (an HTTP client, Redis, the stores), ~7 MB of an idle broker's memory.
    """

    def __init__(self, package: ModuleType) -> None:
        self._package = package
        self._found: dict[str, IPluginFactory] = {}
        self._all: dict[str, IPluginFactory] | None = None

    def __getitem__(self, name: str) -> IPluginFactory:
        factory = self._found.get(name)
        if factory is not None:
            return factory
        if self._all is None:
            for moduleName, dropin in getCache(self._package).items():
                for cached in dropin.plugins:
                    if name not in (cached.name, moduleName):
                        continue
                    if IPluginFactory not in cached.provided:
                        continue
                    try:
                        loaded = cached.load()
                    except Exception:
                        # As getPlugins does: the module is broken, the name unknown.
                        log.failure("cannot load plugin {name}", name=name)
                        continue
                    if IPlugin.providedBy(loaded) and getattr(loaded, "name", None) == name:
                        factory = cast(IPluginFactory, loaded)
                        self._found[name] = factory
                        return factory
        return self._everything()[name]

    def _everything(self) -> dict[str, IPluginFactory]:
        if self._all is None:
            found: dict[str, IPluginFactory] = {}
            for factory in getPlugins(IPluginFactory, self._package):
                if IPlugin.providedBy(factory):
                    found.setdefault(factory.name, factory)
            self._all = found
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())


def buildPlugin(
    name: str,
    options: Mapping[str, str],
    context: PluginContext,
    *,
    file: str,
    section: str,
    key: str | None = None,
    available: Mapping[str, IPluginFactory] | None = None,
    instance: str | None = None,
) -> Any:
    """
    Build plugin C{name} with C{options}.

    @param section: where the name was given (e.g. C{auth}, with C{key} C{chain}), for the error
        when it is unknown; errors in options are reported against C{[plugin:NAME]}.
    @param available: the result of L{findPlugins}; by default the shipped plugins only.
    @param instance: the name of the C{[plugin:INSTANCE]} section whose C{plugin} key named
        plugin C{name}, when it is not C{name} itself; errors are then reported against it.
    @raise ConfigError: C{name} is unknown or its options are bad.
    """
    if available is None:
        available = findPlugins()
    factory = available.get(name)
    if factory is None:
        known = ", ".join(sorted(available)) or "none"
        if instance is not None:
            section, key = f"plugin:{instance}", "plugin"
        raise ConfigError(file, section, key, f"unknown plugin {name!r}; available: {known}")
    try:
        return factory.build(options, context)
    except PluginConfigError as e:
        raise ConfigError(file, f"plugin:{instance or name}", e.key, e.why) from None


class Plugins:
    """
    The plugins of one configuration, each built once however many chains name it, so that an
    authenticator that is also an authorizer shares its state (and its reload) between the two.

    A name is a plugin's own or that of a C{[plugin:NAME]} section with a C{plugin} key, an
    instance of the plugin that key names: so one plugin can be loaded twice (two password files,
    two webhooks), each instance with its section's options.

    @ivar built: every plugin built so far, by name, in the order first asked for.
    """

    def __init__(self, config: Config, reactor: Any) -> None:
        self._config = config
        self._file = config.source or "(default configuration)"
        self._available = findPlugins(config.pluginPaths)
        self._context = PluginContext(
            reactor=reactor,
            configDirectory=config.configDirectory,
            brokerConfig=config.broker,
            lookup=self._lookup,
            storePlugin=config.storePlugin,
        )
        self.built: dict[str, Any] = {}

    def get(self, name: str, interface: type[Interface], *, section: str, key: str | None) -> Any:
        """
        The plugin C{name}, built on first use from its C{[plugin:NAME]} section.

        @param interface: what the caller will use it as.
        @param section: where C{name} was given, with C{key}, for errors.
        @raise ConfigError: the plugin is unknown, its options are bad, or it does not provide
            C{interface}.
        """
        plugin = self.built.get(name)
        if plugin is None:
            options = dict(self._config.pluginSections.get(name, {}))
            kind = options.pop("plugin", name)
            plugin = buildPlugin(
                kind,
                options,
                self._context,
                file=self._file,
                section=section,
                key=key,
                available=self._available,
                instance=None if kind == name else name,
            )
            self.built[name] = plugin
        if not interface.providedBy(plugin):
            raise ConfigError(
                self._file, section, key, f"plugin {name!r} does not provide {interface.__name__}"
            )
        return plugin

    def provide(self, name: str, plugin: Any) -> None:
        """
        Make C{plugin}, which the broker built itself (a cluster node's Redis store), the
        plugin called C{name} and the store the plugins built from now on are told of
        (L{PluginContext.storePlugin}).
        """
        self.built[name] = plugin
        self._context = replace(self._context, storePlugin=name)

    def _lookup(self, name: str, interface: type[Interface]) -> Any:
        # For PluginContext.plugin: the asking plugin names the option at fault, so the two
        # errors of the name itself carry no key; errors in the options of plugin `name` are
        # that plugin's own and keep their section.
        if (
            name not in self._config.pluginSections
            and name not in self._available
            and name not in self.built
        ):
            known = ", ".join(sorted(self._available)) or "none"
            raise PluginConfigError(None, f"unknown plugin {name!r}; available: {known}")
        plugin = self.get(name, Interface, section=f"plugin:{name}", key=None)
        if not interface.providedBy(plugin):
            raise PluginConfigError(None, f"plugin {name!r} does not provide {interface.__name__}")
        return plugin

    def chain(
        self, names: Sequence[str], interface: type[Interface], *, section: str, key: str
    ) -> tuple[Any, ...]:
        """L{get} for each of C{names}, in order."""
        return tuple(self.get(n, interface, section=section, key=key) for n in names)

    def checkAllUsed(self) -> None:
        """
        Once everything that names plugins has been built: refuse a C{[plugin:NAME]} section
        nothing named, which would otherwise be ignored without a word (a plugin left out of
        every chain, or a misspelt name in one).

        @raise ConfigError: naming the first such section.
        """
        for name in self._config.pluginSections:
            if name not in self.built:
                raise ConfigError(
                    self._file,
                    f"plugin:{name}",
                    None,
                    "no chain uses this plugin: name it in [auth], [acl], [selectors] or"
                    " [observers] chain, [store] plugin or a listener's auth, or remove the"
                    " section",
                )


def checkOptions(
    options: Mapping[str, str], *, required: Sequence[str] = (), optional: Sequence[str] = ()
) -> None:
    """
    For a plugin's L{IPluginFactory.build}: refuse unknown and missing options.

    @raise PluginConfigError: naming the first unknown or missing option.
    """
    known = (*required, *optional)
    for key in options:
        if key not in known:
            raise PluginConfigError(key, f"unknown option; expected one of {', '.join(known)}")
    for key in required:
        if not options.get(key):
            raise PluginConfigError(key, "required")
