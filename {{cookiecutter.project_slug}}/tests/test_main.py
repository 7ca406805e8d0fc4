"""The command line's refusals to start: one clear line and exit status 2, never a traceback."""

from __future__ import annotations

import pytest

from {{ cookiecutter.package_name }}.__main__ import main


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [("HUB_RATE_PER_SECOND", "-1", "rate_per_second"), ("SERVER_PORT", "s3cret", "port")],
)
def test_a_settings_error_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    field: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: invalid settings: {variable}: ")
    assert error.count("\n") == 1, "one line"
    assert f" {field}" not in error
    assert value not in error, "values are not echoed: they may be secrets"


def test_the_command_line_refuses_workers_with_reload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "2", "--reload"]) == 2
    assert capsys.readouterr().err.startswith("error: --reload serves one process")


def test_a_broker_url_this_service_cannot_serve_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_URL", "nats://127.0.0.1:4222")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: BROKER_URL: no broker for nats:// in this service"), error
    assert error.count("\n") == 1, "one line"
{%- if not cookiecutter.use_redis %}


def test_several_workers_are_refused_without_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each worker would have rooms of its own: a message would reach a part of each room."""
    for argv, workers in ((["serve", "--workers", "2"], None), (["serve"], "3")):
        if workers is not None:
            monkeypatch.setenv("SERVER_WORKERS", workers)
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1, "one line"
        assert "needs Redis" in error
        assert "SERVER_WORKERS" in error
{%- endif %}
