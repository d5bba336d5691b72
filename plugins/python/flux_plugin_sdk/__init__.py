"""The Flux plugin SDK for Python: the helpers of the Rust SDK, over plain Python values.

A plugin subclasses `Plugin` and returns actions built with the helpers (`emit`, `reply`,
`join`, `snapshot`, `publish_once`, ...). The same code runs in two places:

- in the gateway, as a WebAssembly component built with componentize-py against the
  `flux:gateway` WIT: the app module exports `WitWorld = flux_plugin_sdk.component.world(MyPlugin)`;
- natively in CPython, for the plugin's own unit tests: `flux_plugin_sdk.testing.TestHost`
  answers the host functions (`cache_get`, `caller`, `log`, `leave_rooms`).

Its version follows the WIT's (flux:gateway 0.1.1).
"""

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

__version__ = "0.1.1"


# --- What the gateway gives a plugin -------------------------------------------------------


@dataclass
class Record:
    """A bus record: `payload` is JSON text."""

    topic: str
    key: Optional[str]
    payload: str
    timestamp_ms: int = 0


@dataclass
class Request:
    """A client event: `payload` is the JSON text of its first argument."""

    event: str
    payload: str
    user_id: Optional[str] = None


@dataclass
class Principal:
    """The authenticated user behind a request."""

    subject: str
    scopes: List[str]
    claims: str = "{}"


class RecordError(Exception):
    """Raised by `on_record`: the record is malformed (the message is the reason)."""


class RequestError(Exception):
    """Raised by `on_request`: the client's request is invalid (the message is shown to it)."""


class InternalError(RequestError):
    """Raised by `on_request`: the plugin failed; the client gets a generic error."""


# --- What a plugin gives back ---------------------------------------------------------------


@dataclass
class Emit:
    room: str
    event: str
    payload: str


@dataclass
class Reply:
    event: str
    payload: str


@dataclass
class Join:
    room: str


@dataclass
class CachePut:
    key: str
    payload: str
    hydrate_room: Optional[str] = None
    hydrate_event: Optional[str] = None


@dataclass
class CacheInvalidate:
    key: str


@dataclass
class Publish:
    topic: str
    key: Optional[str]
    payload: str
    dedupe_key: Optional[str] = None


@dataclass
class Info:
    """What `describe` returns: build it with `Describe`."""

    name: str
    version: str
    consumes: List[str] = field(default_factory=list)
    handles: List[str] = field(default_factory=list)
    rooms: List[str] = field(default_factory=list)
    publishes: List[str] = field(default_factory=list)
    caches: List[tuple] = field(default_factory=list)  # (key_prefix, ttl_ms)
    timers: List[tuple] = field(default_factory=list)  # (name, interval_ms)


class Describe:
    """`Describe("fx", "1.0.0").consumes([...]).handles([...]).rooms([...]).build()`"""

    def __init__(self, name: str, version: str):
        self._info = Info(name, version)

    def consumes(self, topics):
        self._info.consumes = list(topics)
        return self

    def handles(self, events):
        self._info.handles = list(events)
        return self

    def rooms(self, rooms):
        self._info.rooms = list(rooms)
        return self

    def publishes(self, topics):
        self._info.publishes = list(topics)
        return self

    def cache(self, key_prefix: str, ttl_ms: int):
        self._info.caches.append((key_prefix, ttl_ms))
        return self

    def timer(self, name: str, interval_ms: int):
        self._info.timers.append((name, interval_ms))
        return self

    def build(self) -> Info:
        return self._info


class Plugin:
    """A domain plugin. Only `describe` is required."""

    def describe(self) -> Info:
        raise NotImplementedError

    def on_record(self, record: Record) -> list:
        return []

    def on_request(self, request: Request) -> list:
        raise RequestError(f"{request.event} is not handled")

    def on_timer(self, name: str) -> list:
        return []


# --- Helpers --------------------------------------------------------------------------------


def parse(payload: str) -> Any:
    """JSON text to a value; `RecordError` with the reason when it is not JSON."""
    try:
        return json.loads(payload)
    except ValueError as e:
        raise RecordError(f"invalid payload: {e}") from None


def _envelope(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


def success(data: Any) -> str:
    """`{"status":"success","data":…}`: the envelope of every state event of the contract."""
    return _envelope({"status": "success", "data": data})


def scoped_success(scope: str, data: Any) -> str:
    return _envelope({"status": "success", "scope": scope, "data": data})


def loading(message: str) -> str:
    return _envelope({"status": "loading", "message": message})


def error(message: str) -> str:
    return _envelope({"status": "error", "message": message})


def emit(room: str, event: str, payload: str) -> Emit:
    return Emit(room, event, payload)


def reply(event: str, payload: str) -> Reply:
    return Reply(event, payload)


def join(room: str) -> Join:
    return Join(room)


def cache_for_room(key: str, room: str, event: str, payload: str) -> CachePut:
    return CachePut(key, payload, room, event)


def cache_put(key: str, payload: str) -> CachePut:
    return CachePut(key, payload)


def snapshot(key: str, room: str, event: str, payload: str) -> list:
    """A room's new state: cached for hydration and pushed live."""
    return [cache_for_room(key, room, event, payload), emit(room, event, payload)]


def publish(topic: str, key: Optional[str], payload: str) -> Publish:
    return Publish(topic, key, payload)


def publish_once(topic: str, key: Optional[str], payload: str, dedupe_key: str) -> Publish:
    return Publish(topic, key, payload, dedupe_key)


# --- The host -------------------------------------------------------------------------------

DEBUG, INFO, WARN, ERROR = "debug", "info", "warn", "error"

# The gateway's imports when running as a component; a `testing.TestHost` natively.
_host = None


def _the_host():
    global _host
    if _host is None:
        from . import component

        _host = component.Host()
    return _host


def cache_get(key: str) -> Optional[str]:
    """Read this plugin's cache."""
    return _the_host().cache_get(key)


def caller() -> Optional[Principal]:
    """The authenticated user behind the request being handled; None elsewhere."""
    return _the_host().caller()


def leave_rooms(pattern: str) -> None:
    """Take the requesting socket out of its rooms matching `pattern`. Only in `on_request`."""
    _the_host().leave_rooms(pattern)


def log(level: str, message: str) -> None:
    """Write to the gateway's log, tagged with this plugin's name and version."""
    _the_host().log(level, message)
