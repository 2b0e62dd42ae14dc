"""Dependencies of the billing routers: settings and the webhook secret box."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hub.billing.secret_box import SecretBox
from hub.billing.settings import BillingSettings


def get_billing_settings(request: Request) -> BillingSettings:
    """``app.state.billing_settings`` if set (tests, ``hub serve``), else ``HUB_BILLING_*``."""
    settings = getattr(request.app.state, "billing_settings", None)
    return settings if isinstance(settings, BillingSettings) else BillingSettings()


def get_secret_box(request: Request) -> SecretBox:
    """The box sealing webhook secrets, keyed in the hub's key directory."""
    box = getattr(request.app.state, "billing_secret_box", None)
    if not isinstance(box, SecretBox):
        box = SecretBox(request.app.state.settings.keys_dir)
        request.app.state.billing_secret_box = box
    return box


BillingSettingsDep = Annotated[BillingSettings, Depends(get_billing_settings)]
SecretBoxDep = Annotated[SecretBox, Depends(get_secret_box)]
