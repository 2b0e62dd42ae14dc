"""Which real backends the suite will use; `make test` prints this first.

PostgreSQL runs when ``HUB_TEST_DATABASE_URL`` is set; Mosquitto runs when
``HUB_TEST_MOSQUITTO`` names a binary (or ``auto`` finds one on the PATH).
SQLite and the embedded amqtt broker always run. ``.ci/run`` sets both where
the services exist, so CI exercises both matrices.
"""

from __future__ import annotations

import os
import shutil


def postgres_url() -> str | None:
    """The PostgreSQL URL for tests, or ``None`` when it should not run."""
    return os.environ.get("HUB_TEST_DATABASE_URL") or None


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary tests may start, or ``None``."""
    wanted = os.environ.get("HUB_TEST_MOSQUITTO", "auto")
    if wanted in ("", "0", "off", "no"):
        return None
    if wanted == "auto":
        return shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
        )
    return wanted if os.path.exists(wanted) else None


def describe() -> str:
    """One line per backend family saying what will run."""
    pg = postgres_url()
    mq = mosquitto_binary()
    return "\n".join(
        [
            "databases: sqlite"
            + (" + postgresql" if pg else " (postgresql: HUB_TEST_DATABASE_URL unset)"),
            "brokers:   embedded amqtt"
            + (f" + mosquitto ({mq})" if mq else " (mosquitto: not found)"),
        ]
    )


if __name__ == "__main__":
    print(describe())
