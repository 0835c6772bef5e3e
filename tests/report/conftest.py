"""Hand-made allure result files for the report's tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest


def write_result(
    directory: Path,
    name: str,
    status: str,
    *,
    check: str | None = None,
    target: str = "reference",
    client: str | None = None,
    defects: str | None = None,
    message: str = "",
    stop: int = 2000,
    attachments: list[dict] | None = None,
) -> None:
    labels = [{"name": "target", "value": target}, {"name": "suite_area", "value": "api"}]
    if check:
        labels.append({"name": "conformance_id", "value": check})
    if client:
        labels.append({"name": "client", "value": client})
    if defects:
        labels.append({"name": "defects", "value": defects})
    data = {
        "uuid": str(uuid.uuid4()),
        "name": name,
        "fullName": f"suites.api.test_x#{name}",
        "status": status,
        "statusDetails": {"message": message, "trace": "Traceback ..."},
        "labels": labels,
        "attachments": attachments or [],
        "start": stop - 1000,
        "stop": stop,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{data['uuid']}-result.json").write_text(json.dumps(data))


@pytest.fixture
def result() -> Callable[..., None]:
    """`result(dir, name, status, check=..., client=..., message=..., attachments=...)`."""
    return write_result
