"""How the billing package plugs into the hub (see :mod:`hub.plugins`).

Tables (:mod:`hub.billing.models`), routers (price plans, invoices, periods,
audit, leakage, events, webhooks; the stateless preview router is mounted by
:mod:`hub.app` itself) and three periodic jobs: the period job (open, close,
invoice), the notification checks (thresholds, expiring entitlements) and the
webhook deliveries. Settings: ``HUB_BILLING_*`` (:mod:`hub.billing.settings`).
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.billing.delivery import deliver_due
from hub.billing.jobs import notifications_job, periods_job
from hub.billing.routers import ROUTERS
from hub.billing.secret_box import SecretBox
from hub.billing.settings import BillingSettings
from hub.plugins import HubContext, HubPlugin, PeriodicJob


def jobs(context: HubContext, settings: BillingSettings | None = None) -> Sequence[PeriodicJob]:
    """The billing jobs for a running hub (``settings`` default: ``HUB_BILLING_*``)."""
    settings = settings or BillingSettings()
    factory, clock = context.session_factory, context.clock
    box = SecretBox(context.settings.keys_dir)

    def deliver() -> object:
        return deliver_due(factory, clock, box, settings)

    return (
        PeriodicJob("billing-periods", settings.job_seconds, periods_job(factory, clock, settings)),
        PeriodicJob(
            "billing-notifications",
            settings.notify_seconds,
            notifications_job(factory, clock, settings),
        ),
        PeriodicJob("billing-webhooks", settings.delivery_seconds, deliver),
    )


PLUGIN = HubPlugin(
    name="billing",
    models_module="hub.billing.models",
    routers=ROUTERS,
    jobs=jobs,
)
"""Price plans, billing periods, invoices, audit, leakage, events, webhooks (issue #5)."""
