"""``/api/v1/billing``: stateless price previews.

``POST /billing/preview`` takes a plan as the API accepts it (see
:mod:`hub.billing.plans`) and a quantity, and returns the charge with its
breakdown. Nothing is read or stored; any role may call it.
"""

from __future__ import annotations

from fastapi import APIRouter

from hub.api.deps import ViewerDep
from hub.billing.plans import ChargeOut, PreviewRequest, preview

router = APIRouter(prefix="/billing", tags=["billing"])


@router.post("/preview")
def preview_charge(body: PreviewRequest, caller: ViewerDep) -> ChargeOut:
    """Price a quantity under a plan: the total in minor units and the breakdown.

    A plan that cannot be priced answers 422 ``invalid_plan`` (naming the field);
    a negative, NaN, infinite or too large quantity answers 422
    ``invalid_quantity``; a malformed body (JSON floats for money or quantities
    included) answers 422 ``validation_failed``.
    """
    return preview(body)
