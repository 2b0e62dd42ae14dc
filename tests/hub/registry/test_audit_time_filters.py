"""Audit time filters must carry a timezone: a naive time is a 422, not a 500."""


def test_naive_since_is_a_validation_error(client, tenant):
    response = client.get(
        "/api/v1/audit", params={"since": "2024-01-01T00:00:00"}, headers=tenant.headers("viewer")
    )
    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"


def test_aware_since_filters(client, tenant):
    response = client.get(
        "/api/v1/audit",
        params={"since": "2100-01-01T00:00:00Z"},
        headers=tenant.headers("viewer"),
    )
    assert response.status_code == 200
    assert response.json()["items"] == []
    everything = client.get(
        "/api/v1/audit", params={"since": "2000-01-01T00:00:00+00:00"}, headers=tenant.headers()
    )
    assert everything.json()["total"] >= 1
