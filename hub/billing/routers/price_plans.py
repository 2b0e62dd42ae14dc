"""``/api/v1/products/{product_id}/price-plans``: a product's price plans."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.billing import price_plans
from hub.billing.schemas import PricePlanCreate, PricePlanPublic, PricePlanUpdate

router = APIRouter(prefix="/products/{product_id}/price-plans", tags=["billing"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_price_plan(
    product_id: str, body: PricePlanCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> PricePlanPublic:
    """Attach a plan to the product: its recurring fee (no ``meter``) or a metered feature's.

    A plan that cannot be priced answers 422 ``invalid_plan``; an unknown
    metered feature 422 ``validation_failed``; a plan of the same charge
    already active from the same instant 409.
    """
    row = price_plans.create_plan(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        product_id=product_id,
        data=body,
    )
    return PricePlanPublic.model_validate(row)


@router.get("")
def list_price_plans(
    product_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[PricePlanPublic]:
    """The product's plans: recurring fee first, then by meter, newest first."""
    rows, total = price_plans.list_plans(
        session, caller.tenant_id, product_id, limit=page.limit, offset=page.offset
    )
    return Page[PricePlanPublic](
        items=[PricePlanPublic.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{plan_id}")
def get_price_plan(
    product_id: str, plan_id: str, session: SessionDep, caller: ViewerDep
) -> PricePlanPublic:
    """One plan."""
    row = price_plans.get_plan(session, caller.tenant_id, product_id, plan_id)
    return PricePlanPublic.model_validate(row)


@router.patch("/{plan_id}")
def update_price_plan(
    product_id: str,
    plan_id: str,
    body: PricePlanUpdate,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
) -> PricePlanPublic:
    """Change a plan no invoice has used (409 once one has: add a newer plan instead)."""
    row = price_plans.update_plan(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        product_id=product_id,
        plan_id=plan_id,
        data=body,
    )
    return PricePlanPublic.model_validate(row)


@router.delete("/{plan_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_price_plan(
    product_id: str, plan_id: str, session: SessionDep, caller: OperatorDep, now: NowDep
) -> Response:
    """Delete a plan no invoice has used (409 once one has)."""
    price_plans.delete_plan(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        product_id=product_id,
        plan_id=plan_id,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
