"""``GET <prefix>/metrics``: the hub's counters and state in the Prometheus text format."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hubbub import Hub, HubApp, Namespace


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape, by metric name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_connections_publications_and_recovery() -> None:
    """Counters and gauges follow what the hub did, read at scrape time."""
    hub = Hub(anonymous=True, namespaces=[Namespace(), Namespace(name="h", history_size=10)])
    with TestClient(HubApp(hub)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_json({"type": "subscribe", "channel": "h:x", "id": 1})
            epoch = ws.receive_json()["epoch"]
            ws.send_json({"type": "publish", "channel": "h:x", "data": 1, "id": 2})
            replies = {ws.receive_json()["type"], ws.receive_json()["type"]}
            assert replies == {"ack", "message"}
            ws.send_json({"type": "unsubscribe", "channel": "h:x", "id": 3})
            ws.receive_json()
            recover = {"offset": 0, "epoch": epoch}
            ws.send_json({"type": "subscribe", "channel": "h:x", "id": 4, "recover": recover})
            assert ws.receive_json()["recovered"] is True
            response = client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            scraped = samples(response.text)
            assert scraped["hubbub_connections_total"] == 1
            assert scraped["hubbub_connections_open"] == 1
            assert scraped["hubbub_publications_total"] == 1
            assert scraped["hubbub_deliveries_total"] == 1
            assert scraped["hubbub_recovered_total"] == 1
            assert scraped["hubbub_not_recovered_total"] == 0
            assert scraped["hubbub_channels"] == 1
            assert scraped["hubbub_subscriptions"] == 1
            assert scraped["hubbub_running"] == 1


def test_metrics_key_is_required_when_configured() -> None:
    """With ``metrics_key`` the scrape needs ``Authorization: apikey <key>``; 401 otherwise."""
    hub = Hub(anonymous=True)
    with TestClient(HubApp(hub, metrics_key="s3cret")) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"authorization": "apikey nope"})
        assert wrong.status_code == 401
        right = client.get("/metrics", headers={"authorization": "apikey s3cret"})
        assert right.status_code == 200
        assert "hubbub_running" in right.text


def test_an_empty_metrics_key_is_refused_when_built() -> None:
    """A configuration mistake fails at construction."""
    with pytest.raises(ValueError, match="metrics_key"):
        HubApp(Hub(anonymous=True), metrics_key="")
