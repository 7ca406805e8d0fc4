"""The project's name and description reach the API as the text they were answered with."""

from __future__ import annotations

from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.about import DESCRIPTION, NAME
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings


def test_the_api_is_titled_and_described_from_about_json() -> None:
    app = create_app(Settings())
    assert (app.title, app.description) == (NAME, DESCRIPTION)


def test_the_openapi_document_renders_with_every_route(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    assert (document["info"]["title"], document["info"]["description"]) == (NAME, DESCRIPTION)
    assert "/healthz" in document["paths"]


def test_the_name_and_description_are_one_line_of_text() -> None:
    assert NAME.strip()
    assert "\n" not in NAME + DESCRIPTION
