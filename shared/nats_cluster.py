"""Talking to a NATS cluster: one `NATS_URL` setting naming several servers, the errors that mean
"the cluster is between leaders" rather than "this message is bad", and how long to wait then."""

from __future__ import annotations

import nats.errors
import nats.js.errors

TRANSIENT_NATS_ERRORS: tuple[type[Exception], ...] = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)
"""What a publish, a KV write or an ack raises while a stream's leader is being elected or the
server a client is connected to has just died: the same message succeeds a few seconds later."""

CLUSTER_RETRY_FIRST_DELAY_S = 1.0
CLUSTER_RETRY_MAX_DELAY_S = 30.0


def server_urls(nats_url: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` (the usual way to name a cluster) as the list clients take."""
    urls = [part.strip() for part in nats_url.split(",") if part.strip()]
    if not urls:
        raise ValueError("NATS_URL names no server: give one URL, or several separated by commas")
    return urls


def without_credentials(nats_url: str) -> str:
    """The server list as it may be printed or logged: user and password of every URL removed."""
    return ",".join(_without_userinfo(url) for url in server_urls(nats_url))


def _without_userinfo(url: str) -> str:
    scheme, separator, rest = url.rpartition("://")
    return scheme + separator + rest.rsplit("@", 1)[-1]


def cluster_retry_delay_s(delivery: int) -> float:
    """Doubling from 1 s up to 30 s: with the default eight deliveries a message outlasts about a
    minute of unavailability, far longer than a JetStream leader election (a few seconds)."""
    return min(CLUSTER_RETRY_FIRST_DELAY_S * 2 ** max(delivery - 1, 0), CLUSTER_RETRY_MAX_DELAY_S)
