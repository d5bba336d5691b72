"""The FX mapping in CPython: python3 -m unittest (with the SDK on PYTHONPATH)."""

import json
import unittest

from app import Fx
from flux_plugin_sdk import RecordError, join, loading, reply
from flux_plugin_sdk.testing import TestHost

TOPIC = "fx.service.event.rates"


def update(seq, **rates):
    return json.dumps({"seq": seq, "base": "USD", "rates": rates, "ts": 0})


class FxTest(unittest.TestCase):
    def test_rates_become_quotes_with_their_change_and_a_request_gets_the_latest(self):
        host = TestHost()
        self.assertEqual(
            host.request(Fx(), "fxRatesRequest"),
            [reply("fxRatesUpdate", loading("Fetching FX rates")), join("fx.rates")],
        )
        host.record(Fx(), TOPIC, "USD", update(1, EUR=0.92, INR=84.0))
        actions = host.record(Fx(), TOPIC, "USD", update(2, EUR=0.93, INR=84.0))
        emitted = json.loads(actions[1].payload)
        self.assertEqual(actions[1].room, "fx.rates")
        self.assertEqual(emitted["data"]["seq"], 2)
        self.assertEqual(
            emitted["data"]["quotes"],
            [
                {"currency": "EUR", "rate": 0.93, "change": 0.01},
                {"currency": "INR", "rate": 84.0, "change": 0.0},
            ],
        )
        self.assertEqual(host.request(Fx(), "fxRatesRequest")[0].payload, actions[1].payload)

    def test_a_malformed_update_is_a_record_error(self):
        host = TestHost()
        for payload in ["not json", '{"rates": {"EUR": "high"}}', "[]"]:
            with self.assertRaises(RecordError):
                host.record(Fx(), TOPIC, None, payload)


if __name__ == "__main__":
    unittest.main()
