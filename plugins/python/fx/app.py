"""The FX domain, in Python: the FX service's rates (`fx.service.event.rates`, one record
per update, `{seq, base, rates: {EUR: 0.92, ...}, ts}`) become `fxRatesUpdate` in the room
`fx.rates`, with each rate's change since the previous update; the latest is cached for
sockets that join, and `fxRatesRequest` answers from the cache (or says it is loading)."""

from flux_plugin_sdk import Describe, Plugin, RecordError, cache_get, join, loading, parse, reply, snapshot, success

TOPIC = "fx.service.event.rates"
ROOM = "fx.rates"
EVENT = "fxRatesUpdate"
LATEST = "fx.latest"


class Fx(Plugin):
    def describe(self):
        return (
            Describe("fx", "1.0.0")
            .consumes([TOPIC])
            .handles(["fxRatesRequest"])
            .rooms([ROOM])
            .cache("fx.", 60_000)
            .build()
        )

    def on_record(self, record):
        update = parse(record.payload)
        rates = update.get("rates") if isinstance(update, dict) else None
        if not isinstance(rates, dict) or not all(isinstance(r, (int, float)) for r in rates.values()):
            raise RecordError("an FX update has a `rates` object of numbers")
        previous = {}
        cached = cache_get(LATEST)
        if cached is not None:
            previous = {q["currency"]: q["rate"] for q in parse(cached)["data"]["quotes"]}
        quotes = [
            {
                "currency": currency,
                "rate": rate,
                "change": round(rate - previous[currency], 6) if currency in previous else 0.0,
            }
            for currency, rate in sorted(rates.items())
        ]
        data = {"seq": update.get("seq"), "base": update.get("base", "USD"), "quotes": quotes}
        return snapshot(LATEST, ROOM, EVENT, success(data))

    def on_request(self, request):
        cached = cache_get(LATEST)
        if cached is not None:
            return [reply(EVENT, cached), join(ROOM)]
        return [reply(EVENT, loading("Fetching FX rates")), join(ROOM)]


try:
    from flux_plugin_sdk.component import world

    WitWorld = world(Fx)
except ImportError:
    pass
