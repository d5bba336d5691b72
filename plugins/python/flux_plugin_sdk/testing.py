"""Test a plugin's mapping in CPython: feed it records, requests and timer ticks, give it a
cache and a caller, and assert the actions — no wasm, no gateway.

    host = TestHost(caller=Principal("user-1", ["fx:read"]))
    actions = host.record(Fx(), "fx.service.event.rates", None, '{"seq":1}')
    assert actions == snapshot("fx.latest", "fx.rates", "fxRatesUpdate", payload)

Cache actions are applied as the gateway would, so a later request sees them.
"""

import flux_plugin_sdk as sdk


class TestHost:
    __test__ = False  # not a pytest test class

    def __init__(self, cache=None, caller=None):
        self.cache = dict(cache or {})
        self.principal = caller
        self.logs = []
        self.left_rooms = []
        self._in_request = False
        sdk._host = self

    # The host functions, as the plugin calls them.
    def cache_get(self, key):
        return self.cache.get(key)

    def caller(self):
        return self.principal if self._in_request else None

    def leave_rooms(self, pattern):
        self.left_rooms.append(pattern)

    def log(self, level, message):
        self.logs.append((level, message))

    # What a test does.
    def record(self, plugin, topic, key, payload):
        actions = plugin.on_record(sdk.Record(topic, key, payload))
        self._apply(actions)
        return actions

    def request(self, plugin, event, payload="null"):
        user_id = self.principal.subject if self.principal else None
        self._in_request = True
        try:
            actions = plugin.on_request(sdk.Request(event, payload, user_id))
        finally:
            self._in_request = False
        self._apply(actions)
        return actions

    def timer(self, plugin, name):
        actions = plugin.on_timer(name)
        self._apply(actions)
        return actions

    def _apply(self, actions):
        for action in actions:
            if isinstance(action, sdk.CachePut):
                self.cache[action.key] = action.payload
            elif isinstance(action, sdk.CacheInvalidate):
                self.cache.pop(action.key, None)
