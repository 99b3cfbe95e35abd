"""The GRIP libraries Pushpin users run, against the whole fanout_tx tree on loopback
(issue #18): PyPI ``gripcontrol``/``pubcontrol`` publishers (the HTTP publish API, and
ZeroMQ through the command socket's discovery, PUSH and XPUB), and a minimal
``django-eventstream`` app, served in-process by ``twisted.web.wsgi`` from a thread pool,
behind the proxy. Real libraries, real sockets; the blocking library calls run in threads
so the reactor keeps serving them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import django
from django.conf import settings

_DB_DIR = tempfile.mkdtemp(prefix="fanout-django-")
atexit.register(shutil.rmtree, _DB_DIR, True)
if not settings.configured:
    settings.configure(
        SECRET_KEY="fanout-tx-test-secret-of-at-least-32-bytes",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django_eventstream"],
        MIDDLEWARE=["django_grip.GripMiddleware"],
        ROOT_URLCONF=__name__,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(Path(_DB_DIR) / "db.sqlite3")}},
        EVENTSTREAM_STORAGE_CLASS="django_eventstream.storage.DjangoModelStorage",
        GRIP_URL="http://127.0.0.1:9/",  # set per test to the publish port
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

import django_eventstream.urls  # noqa: E402 - needs the settings above
import django_grip  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import include, path  # noqa: E402
from django_eventstream import send_event  # noqa: E402
from django_eventstream.utils import get_storage, publish_kick  # noqa: E402
from gripcontrol import GripPubControl  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402
from twisted.web.server import Site  # noqa: E402
from twisted.web.wsgi import WSGIResource  # noqa: E402

from fanout_tx.tap import build_service, listening_port, load_settings  # noqa: E402
from tests.support.helpers import TrackingFactory, wait_until  # noqa: E402
from tests.support.proxy_fixtures import Collect, tree_config  # noqa: E402


def plain_stream(request: HttpRequest) -> HttpResponse:
    """A GRIP stream on channel ``plain`` (no ids), for the ZeroMQ publishers."""
    django_grip.set_hold_stream(request, "plain")
    return HttpResponse("stream open\n", content_type="text/plain")


urlpatterns = [
    path("events/", include(django_eventstream.urls)),
    path("plain/", plain_stream),
]

_migrated = False
# Signs origin requests and publishes (32 bytes or more: PyJWT warns about shorter keys).
KEY = "a-grip-key-of-at-least-thirty-two-bytes"


def migrate() -> None:
    global _migrated
    if not _migrated:
        call_command("migrate", verbosity=0)
        _migrated = True


class Stack:
    """django-eventstream in a WSGI thread pool, fanout_tx in front of it (signing with
    KEY, which the app checks, as django-grip does with a keyed GRIP_URL)."""

    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.paths: list[str] = []  # what reached Django, in order

    async def start(self) -> Stack:
        await deferToThread(migrate)
        pool = ThreadPool(minthreads=1, maxthreads=8, name="django")
        pool.start()
        self.test.addCleanup(pool.stop)
        app = get_wsgi_application()

        def recording(environ: dict, start_response: Any) -> Any:
            self.paths.append(environ["PATH_INFO"] + "?" + environ.get("QUERY_STRING", ""))
            return app(environ, start_response)

        origin = reactor.listenTCP(0, Site(WSGIResource(reactor, pool, recording)),
                                   interface="127.0.0.1")
        self.test.addCleanup(origin.stopListening)
        config = tree_config(Path(self.test.mktemp()), origin.getHost().port, more=(
            f"[proxy]\nsig_iss=pushpin\nsig_key={KEY}\n"
            "[handler]\ncommand_spec=tcp://127.0.0.1:*\n"
            f"push_in_http_key={KEY}\npush_in_http_iss=pushpin\n"))
        self.root, self.core = build_service(load_settings(str(config)), reactor)
        proxy_service = self.root.getServiceNamed("http-proxy")
        publish = self.root.getServiceNamed("publish-http")
        publish.factory = publish_connections = TrackingFactory(publish.factory)
        # After the stop: every client and publisher connection has closed on our side too.
        self.test.addCleanup(publish_connections.wait_closed)
        self.test.addCleanup(lambda: Deferred.fromCoroutine(
            wait_until(lambda: proxy_service.connection_limit.open == 0)))
        self.root.startService()
        self.test.addCleanup(self.root.stopService)
        self.test.addCleanup(lambda: close_http_clients(django_grip._pubcontrol))
        proxy = next(iter(proxy_service))
        self.proxy_port = (await listening_port(proxy)).getHost().port
        self.publish_url = f"http://127.0.0.1:{(await listening_port(publish)).getHost().port}"
        [self.command_uri] = self.root.getServiceNamed("zmq-command").endpoints
        # django-grip publishes (and verifies Grip-Sig) with the GRIP_URL's iss and key.
        settings.GRIP_URL = f"{self.publish_url}/?iss=pushpin&key={KEY}"
        django_grip._pubcontrol = None
        self.client = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        return self

    async def open(self, path: str, **headers: str) -> Collect:
        """A client request through the proxy; its body arrives in the Collect."""
        response = await self.client.request(
            b"GET", f"http://127.0.0.1:{self.proxy_port}{path}".encode(),
            Headers({k.replace("_", "-"): [v] for k, v in headers.items()}))
        self.test.assertEqual(response.code, 200)
        body = Collect()
        response.deliverBody(body)
        body.done.addErrback(lambda _f: None)  # a held stream is cut when the test ends
        return body

    async def subscribed(self, channel: str) -> None:
        await wait_until(lambda: self.core.router.has_subscribers(channel))

    async def send(self, channel: str, data: Any, **kwargs: Any) -> None:
        """django-eventstream's send_event (stores, then publishes, blocking)."""
        await deferToThread(send_event, channel, "message", data, async_publish=False,
                            **kwargs)


def close_http_clients(publisher: Any) -> None:
    """requests keeps the publish connection alive; close it so the test ends clean."""
    for client in getattr(publisher, "clients", ()):
        session = getattr(client, "requests_session", None)
        if session is not None:
            session.close()


def text(body: Collect) -> str:
    return b"".join(body.chunks).decode()


class DjangoEventstreamTests(TestCase):
    timeout = 30

    async def test_live_events_and_last_event_id_resume(self) -> None:
        """Events reach a live stream with their build-id ids; a new client resuming with
        Last-Event-ID gets only what came after."""
        stack = await Stack(self).start()
        body = await stack.open("/events/?channel=live")
        await stack.subscribed("events-live")
        await wait_until(lambda: "event: stream-open" in text(body))
        await stack.send("live", {"n": 1})
        await stack.send("live", {"n": 2})
        await wait_until(lambda: 'data: {"n": 2}' in text(body))
        self.assertIn('id: live:1\ndata: {"n": 1}', text(body).replace("event: message\n", ""))
        resumed = await stack.open("/events/?channel=live", Last_Event_ID="live:1")
        await wait_until(lambda: 'data: {"n": 2}' in text(resumed))
        self.assertNotIn('data: {"n": 1}', text(resumed))

    async def test_missed_event_is_recovered_through_the_link(self) -> None:
        """An event stored but never published (a lost publish) leaves a gap: the next one's
        prev-id does not follow, the proxy asks the Grip-Link, and Django's answer carries
        the missed event; each reaches the client once, in order."""
        stack = await Stack(self).start()
        body = await stack.open("/events/?channel=gap")
        await stack.subscribed("events-gap")
        await stack.send("gap", {"n": 1})
        await wait_until(lambda: 'data: {"n": 1}' in text(body))
        await deferToThread(get_storage().append_event, "gap", "message", '{"n": 2}')
        await stack.send("gap", {"n": 3})
        await wait_until(lambda: 'data: {"n": 3}' in text(body))
        received = text(body)
        self.assertLess(received.index('data: {"n": 2}'), received.index('data: {"n": 3}'))
        self.assertEqual(received.count('data: {"n": 2}'), 1)
        self.assertTrue(any("link=next" in p for p in stack.paths), stack.paths)

    async def test_skip_user_ids_is_not_replayed(self) -> None:
        """An event sent with skip_user_ids naming the client's user is not delivered, and
        the next event follows without a recovery that would replay it."""
        stack = await Stack(self).start()
        body = await stack.open("/events/?channel=skip")
        await stack.subscribed("events-skip")
        await stack.send("skip", {"n": 1})
        await stack.send("skip", {"secret": True}, skip_user_ids=["anonymous"])
        await stack.send("skip", {"n": 3})
        await wait_until(lambda: 'data: {"n": 3}' in text(body))
        self.assertNotIn("secret", text(body))
        self.assertFalse([p for p in stack.paths if "link=next" in p], stack.paths)
        self.assertIn("id: skip:3", text(body))

    async def test_kick_ends_the_stream(self) -> None:
        """django-eventstream's publish_kick (require-sub on the user channel, then a close
        with a prev-id) sends the stream-error and ends the stream."""
        stack = await Stack(self).start()
        body = await stack.open("/events/?channel=kick")
        await stack.subscribed("events-kick")

        def kick() -> None:
            publish_kick("anonymous", "kick")
            django_grip._get_pubcontrol().wait_all_sent()

        await deferToThread(kick)
        await body.done
        self.assertIn("event: stream-error", text(body))
        self.assertIn("Permission denied to channels: kick", text(body))


class GripcontrolTests(TestCase):
    timeout = 30

    async def test_http_publisher(self) -> None:
        """GripPubControl over the HTTP publish API, with control_iss and key (a JWT)."""
        stack = await Stack(self).start()
        body = await stack.open("/plain/")
        await stack.subscribed("plain")
        publisher = GripPubControl({"control_uri": stack.publish_url, "control_iss": "pushpin",
                                    "key": KEY})
        self.addCleanup(close_http_clients, publisher)
        await deferToThread(publisher.publish_http_stream, "plain", "over http\n",
                            blocking=True)
        await wait_until(lambda: text(body) == "stream open\nover http\n")

    async def test_zmq_push_publisher(self) -> None:
        """GripPubControl with control_zmq_uri: the command socket names the PULL input,
        and the item goes over ZeroMQ PUSH."""
        stack = await Stack(self).start()
        body = await stack.open("/plain/")
        await stack.subscribed("plain")
        publisher = GripPubControl({"control_zmq_uri": stack.command_uri})
        await deferToThread(publisher.publish_http_stream, "plain", "over zmq push\n",
                            blocking=True)
        await wait_until(lambda: text(body) == "stream open\nover zmq push\n")
        await deferToThread(publisher.close)

    async def test_zmq_pub_publisher(self) -> None:
        """With require_subscribers, pubcontrol connects an XPUB to the SUB input, sees the
        subscription for the held channel, and publishes to it."""
        stack = await Stack(self).start()
        body = await stack.open("/plain/")
        await stack.subscribed("plain")
        seen: list[tuple[str, str]] = []
        publisher = GripPubControl({"control_zmq_uri": stack.command_uri,
                                    "require_subscribers": True},
                                   sub_callback=lambda kind, channel: seen.append((kind, channel)))
        self.addCleanup(deferToThread, publisher.close)
        await deferToThread(publisher.wait_all_sent)  # discovery runs on publish; start it
        await deferToThread(publisher.publish_http_stream, "plain", "warm-up\n", blocking=True)
        await wait_until(lambda: ("sub", "plain") in seen)
        await deferToThread(publisher.publish_http_stream, "plain", "over zmq pub\n",
                            blocking=True)
        await wait_until(lambda: "over zmq pub\n" in text(body))
