"""The composition root: the broker a URL names, the features started in order and stopped in
reverse, and a broker URL the service cannot serve refused with the variable's name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.broker import BrokerSettings, LocalBroker
from {{ cookiecutter.package_name }}.feature import Feature
from {{ cookiecutter.package_name }}.settings import Settings

Hook = Callable[[], Awaitable[None]]


def test_a_memory_url_serves_one_process_with_no_outside_check() -> None:
    app = create_app(Settings(broker=BrokerSettings(url="memory://")))
    assert isinstance(app.state.broker, LocalBroker)
    with TestClient(app) as client:
        ready = client.get("/readyz").json()
    assert set(ready["checks"]) == {"accepting", "capacity"}, "no broker check"


def test_a_broker_url_nobody_serves_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"BROKER_URL: no broker for nats://") as refused:
        create_app(Settings(broker=BrokerSettings(url="nats://127.0.0.1:4222")))
    assert "memory://" in str(refused.value), "it says what this service has"
{%- if cookiecutter.use_redis %}


def test_with_redis_and_no_url_the_broker_is_redis() -> None:
    app = create_app(Settings())
    assert app.state.broker.name == "redis"
{%- endif %}


def recorded(calls: list[str], name: str, hook: Callable[[], Awaitable[None]]) -> Hook:
    async def record() -> None:
        calls.append(name)
        await hook()

    return record


def test_features_start_in_order_and_stop_in_reverse(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings(broker=BrokerSettings(url="memory://")))
    features: list[Feature] = app.state.features
    names = [type(feature).__name__ for feature in features]
    calls: list[str] = []
    for feature, name in zip(features, names, strict=True):
        for method in ("start", "stop"):
            hook = recorded(calls, f"{method} {name}", getattr(feature, method))
            monkeypatch.setattr(feature, method, hook)
    with TestClient(app):
        assert calls == [f"start {name}" for name in names]
    assert calls[len(names) :] == [f"stop {name}" for name in reversed(names)]
