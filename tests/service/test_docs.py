"""/docs and /redoc are served without a CDN: every asset they name comes from this server."""

import re

import pytest
from fastapi.testclient import TestClient

URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_external_url(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://|(?<![:\w])//\w", html), html
    urls = [a or b for a, b in URL_ATTRIBUTE.findall(html)]
    assert urls and all(url.startswith("/") for url in urls), urls
    for url in urls:  # the scripts, the style sheet, the icon and the schema load from here
        assert client.get(url).status_code == 200, url
    assert any(url.endswith(".js") for url in urls)


def test_the_openapi_document_is_still_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"]
    assert not any(path.startswith("/docs") for path in schema["paths"])
