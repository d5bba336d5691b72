"""The plugin as a component: the WIT world's exports over a `Plugin`, and the gateway's
imports as the SDK's host. Only importable inside a component built by componentize-py."""

from componentize_py_types import Err, Ok
from wit_world.imports import caller as wit_caller
from wit_world.imports import host as wit_host
from wit_world.imports import types as wit

from . import (
    CacheInvalidate,
    CachePut,
    Emit,
    InternalError,
    Join,
    Principal,
    Publish,
    Record,
    RecordError,
    Reply,
    Request,
    RequestError,
)

_LEVELS = {
    "debug": wit_host.LogLevel.DEBUG,
    "info": wit_host.LogLevel.INFO,
    "warn": wit_host.LogLevel.WARN,
    "error": wit_host.LogLevel.ERROR,
}


class Host:
    def cache_get(self, key):
        return wit_host.cache_get(key)

    def caller(self):
        principal = wit_caller.current()
        if principal is None:
            return None
        return Principal(principal.subject, list(principal.scopes), principal.claims)

    def leave_rooms(self, pattern):
        wit_caller.leave_rooms(pattern)

    def log(self, level, message):
        wit_host.log(_LEVELS.get(level, wit_host.LogLevel.INFO), message)


def _action(action):
    if isinstance(action, Emit):
        return wit.Action_Emit(wit.Emit(action.room, action.event, action.payload))
    if isinstance(action, Reply):
        return wit.Action_Reply(wit.Reply(action.event, action.payload))
    if isinstance(action, Join):
        return wit.Action_Join(action.room)
    if isinstance(action, CachePut):
        hydrate = None
        if action.hydrate_room is not None:
            hydrate = wit.RoomEvent(action.hydrate_room, action.hydrate_event)
        return wit.Action_CachePut(wit.CachePut(action.key, action.payload, hydrate))
    if isinstance(action, CacheInvalidate):
        return wit.Action_CacheInvalidate(action.key)
    if isinstance(action, Publish):
        return wit.Action_Publish(wit.Publish(action.topic, action.key, action.payload, action.dedupe_key))
    raise TypeError(f"not an action: {action!r}")


def world(plugin_class):
    """The `WitWorld` class componentize-py exports, serving `plugin_class`."""
    plugin = plugin_class()

    class WitWorld:
        def describe(self):
            info = plugin.describe()
            return wit.PluginInfo(
                info.name,
                info.version,
                list(info.consumes),
                list(info.handles),
                list(info.rooms),
                list(info.publishes),
                [wit.CachePolicy(prefix, ttl) for prefix, ttl in info.caches],
                [wit.Timer(name, every) for name, every in info.timers],
            )

        def on_records(self, records):
            results = []
            for record in records:
                try:
                    actions = plugin.on_record(Record(record.topic, record.key, record.payload, record.timestamp_ms))
                    results.append(Ok([_action(a) for a in actions]))
                except RecordError as e:
                    results.append(Err(str(e)))
            return results

        def on_request(self, request):
            try:
                actions = plugin.on_request(Request(request.event, request.payload, request.user_id))
            except InternalError as e:
                raise Err(wit.RequestError_Internal(str(e)))
            except RequestError as e:
                raise Err(wit.RequestError_Invalid(str(e)))
            return [_action(a) for a in actions]

        def on_timer(self, name):
            return [_action(a) for a in plugin.on_timer(name)]

    return WitWorld

