"""transports/cors.py: the headers Pushpin 1.36 adds with ``aco`` (checked against it)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fanout_tx.transports.cors import cross_origin_headers

ORIGIN_ANSWER = [("Server", "TwistedWeb"), ("Date", "now"), ("Set-Cookie", "a=1"),
                 ("Set-Cookie", "b=2"), ("Content-Type", "text/html"), ("Content-Length", "6")]


class CrossOriginTests(SynchronousTestCase):
    def test_simple_request(self) -> None:
        """As Pushpin answers a GET with Origin: the origin echoed, non-simple headers exposed."""
        self.assertEqual(cross_origin_headers([("Origin", "http://a.test")], ORIGIN_ANSWER), [
            ("Access-Control-Allow-Methods", "OPTIONS, HEAD, GET, POST, PUT, DELETE"),
            ("Access-Control-Expose-Headers", "Server, Date, Set-Cookie"),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Origin", "http://a.test"),
            ("Access-Control-Max-Age", "3600"),
        ])

    def test_preflight_and_no_origin(self) -> None:
        """Requested method and headers are allowed; without Origin the origin is ``*``."""
        added = dict(cross_origin_headers([
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "X-Foo, Content-Type")], []))
        self.assertEqual(added["Access-Control-Allow-Methods"], "PUT")
        self.assertEqual(added["Access-Control-Allow-Headers"], "X-Foo, Content-Type")
        self.assertEqual(added["Access-Control-Allow-Origin"], "*")
        self.assertNotIn("Access-Control-Expose-Headers", added)

    def test_origin_headers_win(self) -> None:
        """Headers the origin set itself are not added again."""
        added = cross_origin_headers([("Origin", "http://b.test")], [
            ("Access-Control-Allow-Origin", "http://mine.test"),
            ("Access-Control-Max-Age", "10"), ("Access-Control-Expose-Headers", "X-Mine")])
        self.assertEqual(added, [
            ("Access-Control-Allow-Methods", "OPTIONS, HEAD, GET, POST, PUT, DELETE"),
            ("Access-Control-Allow-Credentials", "true"),
        ])
