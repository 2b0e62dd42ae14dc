from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.registry import service
from tests.hub.conftest import TenantKeys
from tests.hub.registry.conftest import create_device, new_public_key_b64

IMPORT = "/api/v1/devices/import"


def post_csv(client: TestClient, tenant: TenantKeys, text: str | bytes) -> Any:
    headers = {**tenant.headers("operator"), "Content-Type": "text/csv"}
    return client.post(IMPORT, content=text, headers=headers)


def test_good_and_bad_rows(
    client: TestClient, tenant: TenantKeys, device_class: dict[str, Any]
) -> None:
    cid = device_class["id"]
    create_device(client, tenant, cid, "EXISTING")
    key = new_public_key_b64()
    text = "\n".join(
        [
            "serial,device_class_id,tags,public_key",
            f"OK-1,{cid},eu;beta,{key}",
            f"OK-2,{cid},,",
            f"EXISTING,{cid},,",  # duplicate of a stored device
            f"OK-1,{cid},,",  # duplicate within the file
            "OK-3,00000000-0000-0000-0000-000000000000,,",  # unknown class
            f"OK-4,{cid},good;bad/tag,",  # bad tags
            f"OK-5,{cid},,%%%notbase64",  # bad key
            f"bad serial,{cid},,",
            f"OK-6,{cid}",  # too few fields
            "",
            f"OK-7,{cid},,{key}",  # key already used by OK-1
        ]
    )
    r = post_csv(client, tenant, text)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["failed"]) == (2, 8)
    by_line = {row["line"]: row for row in body["rows"]}
    assert by_line[2]["status"] == "created" and by_line[2]["device_id"].startswith("dev-")
    expected = {
        4: "duplicate_serial",
        5: "duplicate_serial",
        6: "unknown_device_class",
        7: "invalid_tags",
        8: "invalid_public_key",
        9: "invalid_serial",
        10: "malformed_row",
        12: "duplicate_public_key",
    }
    assert {line: by_line[line]["error_code"] for line in expected} == expected
    listed = client.get("/api/v1/devices", headers=tenant.headers()).json()
    assert sorted(d["serial"] for d in listed["items"]) == ["EXISTING", "OK-1", "OK-2"]
    assert next(d for d in listed["items"] if d["serial"] == "OK-1")["tags"] == ["eu", "beta"]


def test_multipart_upload_and_optional_columns(
    client: TestClient, tenant: TenantKeys, device_class: dict[str, Any]
) -> None:
    text = f"\ufeffSerial,Device_Class_Id\r\nMP-1,{device_class['id']}\r\n"
    r = client.post(
        IMPORT,
        files={"file": ("d.csv", text.encode(), "text/csv")},
        headers=tenant.headers("operator"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "serial,tags\nA,b\n",  # missing required column
        "serial,device_class_id,colour\nA,b,red\n",  # unknown column
        'serial,device_class_id\n"unterminated,x\n',
        "",
    ],
)
def test_malformed_csv_imports_nothing(
    client: TestClient, tenant: TenantKeys, device_class: dict[str, Any], text: str
) -> None:
    r = post_csv(
        client,
        tenant,
        f"serial,device_class_id\nGOOD,{device_class['id']}\n" + text
        if text.startswith('serial,device_class_id\n"')
        else text,
    )
    assert r.status_code == 422
    assert r.json()["error"] == "malformed_csv"
    assert client.get("/api/v1/devices", headers=tenant.headers()).json()["total"] == 0


def test_too_many_rows(
    client: TestClient, tenant: TenantKeys, device_class: dict[str, Any]
) -> None:
    rows = [f"S{i},{device_class['id']}" for i in range(service.MAX_IMPORT_ROWS + 1)]
    r = post_csv(client, tenant, "serial,device_class_id\n" + "\n".join(rows))
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert client.get("/api/v1/devices", headers=tenant.headers()).json()["total"] == 0


def test_body_size_cap(
    client: TestClient, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_IMPORT_BYTES", 1000)
    r = post_csv(client, tenant, "serial,device_class_id\n" + "x" * 200_000)
    assert r.status_code == 413


def test_wrong_content_type_and_encoding(client: TestClient, tenant: TenantKeys) -> None:
    r = client.post(IMPORT, json={"serial": "x"}, headers=tenant.headers("operator"))
    assert r.status_code == 422
    r = post_csv(client, tenant, b"serial,device_class_id\n\xff\xfe,x\n")
    assert r.json()["error"] == "malformed_csv"
    r = client.post(IMPORT, files={"other": ("d.csv", b"x")}, headers=tenant.headers("operator"))
    assert r.status_code == 422
