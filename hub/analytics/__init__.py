"""Fleet analytics over entitlements and manifests (issue 3, item 6).

:mod:`.service` holds the queries (session, tenant and ``now`` in, plain
schema objects out), :mod:`.router` exposes them under
``/api/v1/analytics`` to viewers, and :mod:`hub.cli.analytics` prints them
as tables.
"""
