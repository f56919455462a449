"""One `NATS_URL` names a whole cluster, and no credential of it is ever printed."""

from __future__ import annotations

import pytest

from shared.nats_cluster import cluster_retry_delay_s, server_urls, without_credentials
from shared.settings import Settings
from shared.topology import replicas_to_declare


def test_a_comma_separated_url_is_a_server_list() -> None:
    assert server_urls("nats://a:4222, nats://b:4222,nats://c:4222") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222",
    ]  # fmt: skip
    assert server_urls("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    with pytest.raises(ValueError, match="NATS_URL names no server"):
        server_urls(" , ")


def test_every_servers_credentials_are_removed() -> None:
    printed = without_credentials("nats://gen:s3cret@a:4222,nats://gen:p@ss@b:4222,nats://c:4222")
    assert printed == "nats://a:4222,nats://b:4222,nats://c:4222"


def test_a_leader_election_cannot_use_up_the_deliveries() -> None:
    waits = [cluster_retry_delay_s(delivery) for delivery in range(1, Settings().max_attempts + 2)]
    assert waits == sorted(waits) and max(waits) <= 30
    assert sum(waits) >= 60


def test_replicas_follow_the_setting_but_never_drop_what_an_operator_raised() -> None:
    assert replicas_to_declare(Settings()) == 1
    assert replicas_to_declare(Settings(stream_replicas=3), current=1) == 3
    assert replicas_to_declare(Settings(stream_replicas=1), current=3) == 3
