"""A starting point for a new domain in Python: it relays `example.service.event.updated`
records to `example.global`, keeps the latest one for hydration, and answers
`exampleRequest` from cache."""

from flux_plugin_sdk import Describe, Plugin, cache_get, join, loading, parse, reply, snapshot, success

ROOM = "example.global"
TOPIC = "example.service.event.updated"
CACHE_KEY = "example.latest"
EVENT = "exampleUpdate"


class Example(Plugin):
    def describe(self):
        return Describe("example", "0.1.0").consumes([TOPIC]).handles(["exampleRequest"]).rooms([ROOM]).cache("example.", 60_000).build()

    def on_record(self, record):
        return snapshot(CACHE_KEY, ROOM, EVENT, success(parse(record.payload)))

    def on_request(self, request):
        cached = cache_get(CACHE_KEY)
        if cached is not None:
            return [reply(EVENT, cached)]
        return [reply(EVENT, loading("No data yet")), join(ROOM)]


# The component's exports (componentize-py looks for `WitWorld` in the app module). Importing
# the SDK's component adapter only works inside a component, so natively this is skipped.
try:
    from flux_plugin_sdk.component import world

    WitWorld = world(Example)
except ImportError:
    pass
