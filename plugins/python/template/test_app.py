"""The mapping, tested in CPython: python3 -m unittest"""

import unittest

from app import Example
from flux_plugin_sdk import join, loading, reply, snapshot, success
from flux_plugin_sdk.testing import TestHost


class ExampleTest(unittest.TestCase):
    def test_a_record_is_relayed_and_kept_for_the_next_request(self):
        host = TestHost()
        self.assertEqual(
            host.request(Example(), "exampleRequest"),
            [reply("exampleUpdate", loading("No data yet")), join("example.global")],
        )
        actions = host.record(Example(), "example.service.event.updated", None, '{"value": 42}')
        payload = success({"value": 42})
        self.assertEqual(actions, snapshot("example.latest", "example.global", "exampleUpdate", payload))
        self.assertEqual(host.request(Example(), "exampleRequest"), [reply("exampleUpdate", payload)])


if __name__ == "__main__":
    unittest.main()
