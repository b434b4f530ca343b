"""The one plugin manager, and the registry of what the plugins provide.

Built-in plugins are entry points of the ``emkit`` group in emkit's own setup.cfg, loaded
exactly as a third-party plugin's are. ``EMKIT_PLUGINS=a,b`` limits which third-party
plugins load (an empty value loads none); the built-ins always load.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from emkit import hookspecs
from emkit.errors import EmkitError

ENTRY_POINT_GROUP = "emkit"

# kind -> (hook name, singular noun used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "trainers": ("register_trainers", "trainer"),
    "generators": ("register_generators", "generator"),
    "judges": ("register_judges", "judge backend"),
    "domains": ("register_domains", "domain"),
    "question_sets": ("register_question_sets", "question set"),
    "report_sections": ("register_report_sections", "report section"),
    "report_writers": ("register_report_writers", "report writer"),
    "executors": ("register_executors", "executor"),
    "trackers": ("register_trackers", "tracker"),
}

_plugin_manager: pluggy.PluginManager | None = None
_registry: Registry | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    global _plugin_manager
    if _plugin_manager is None:
        pm = pluggy.PluginManager("emkit")
        pm.add_hookspecs(hookspecs)
        _load_entry_points(pm)
        _plugin_manager = pm
    return _plugin_manager


def _selected_third_party() -> set[str] | None:
    value = os.environ.get("EMKIT_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    selected = _selected_third_party()
    seen: dict[str, str] = {}
    builtin_found = False
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        if seen.get(ep.name) == ep.value:
            continue  # the same distribution seen twice on sys.path
        builtin = dist == "emkit"
        builtin_found |= builtin
        if not builtin and selected is not None and ep.name not in selected:
            continue
        if ep.name in seen:
            raise EmkitError(
                f"Two installed plugins are both named '{ep.name}' ({seen[ep.name]} and {ep.value}); "
                f"uninstall one of them."
            )
        seen[ep.name] = ep.value
        try:
            module = ep.load()
        except Exception as exc:  # the plugin's own bug: name it, don't crash emkit
            raise EmkitError(
                f"Plugin '{ep.name}' (entry point {ep.value}, package {dist}) failed to import: "
                f"{type(exc).__name__}: {exc}; fix or uninstall that package."
            ) from exc
        try:
            pm.register(module, name=ep.name)
        except pluggy.PluginValidationError as exc:
            raise EmkitError(f"Plugin '{ep.name}' ({ep.value}) does not fit emkit's hooks: {exc}.") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise EmkitError(f"A plugin implements a hook emkit does not have: {exc}.") from exc
    if not builtin_found:
        raise EmkitError(
            "emkit's built-in plugins are not registered because emkit is not installed; "
            "run `pip install -e .` in the emkit checkout (see README.md)."
        )


@dataclass
class Registered:
    kind: str
    name: str
    plugin: str
    obj: Any


class Registry:
    """Everything the plugins registered, by kind and name, with who registered it."""

    def __init__(self, pm: pluggy.PluginManager):
        self.entries: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.plugins = [name for name, _ in pm.list_name_plugin()]
        for kind, (hook_name, _) in KINDS.items():
            # Call each implementation on its own so every registration is attributed to
            # its plugin, which duplicate-name errors and `emkit plugins` need.
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                def register(obj, _kind=kind, _plugin=impl.plugin_name):
                    self._add(_kind, obj, _plugin)

                impl.function(**({"register": register} if "register" in impl.argnames else {}))

    def _add(self, kind: str, obj: Any, plugin: str) -> None:
        noun = KINDS[kind][1]
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise EmkitError(f"Plugin '{plugin}' registered a {noun} without a name; give it a `name` string.")
        previous = self.entries[kind].get(name)
        if previous is not None:
            raise EmkitError(
                f"Plugins '{previous.plugin}' and '{plugin}' both register a {noun} named '{name}'; "
                f"uninstall one of them or rename the {noun}."
            )
        self.entries[kind][name] = Registered(kind, name, plugin, obj)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Any:
        entry = self.entries[kind].get(name)
        if entry is None:
            noun = KINDS[kind][1]
            known = ", ".join(self.names(kind)) or "none"
            raise EmkitError(
                f"Unknown {noun} '{name}' (installed: {known}); check the spelling or install the "
                f"plugin that provides it (`emkit plugins` lists what is installed)."
            )
        return entry.obj

    def all(self, kind: str) -> list[Any]:
        return [self.entries[kind][name].obj for name in self.names(kind)]

    def describe_plugins(self) -> list[dict]:
        """One object per plugin: its name and, per kind, the names it provides."""
        described = []
        for plugin in sorted(self.plugins):
            provides = {
                kind: sorted(e.name for e in entries.values() if e.plugin == plugin)
                for kind, entries in self.entries.items()
            }
            described.append({"name": plugin, "provides": provides})
        return described


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = Registry(get_plugin_manager())
    return _registry


def reset_for_tests() -> None:
    """Forget the loaded plugins so the next call reads the entry points again."""
    global _plugin_manager, _registry
    _plugin_manager = None
    _registry = None
