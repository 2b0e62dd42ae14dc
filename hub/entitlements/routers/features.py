"""``/api/v1/products/{product_id}/features``: a product's features."""

from __future__ import annotations

from fastapi import APIRouter, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.entitlements import service
from hub.entitlements.routers.common import NotifyDep
from hub.entitlements.schemas import FeatureCreate, FeaturePublic, FeatureUpdate

router = APIRouter(prefix="/products/{product_id}/features", tags=["features"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_feature(
    product_id: str, body: FeatureCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> FeaturePublic:
    """Add a feature (flag, limit or metered) to a product; keys unique per product."""
    feature = service.create_feature(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        product_id=product_id,
        data=body,
    )
    return FeaturePublic.model_validate(feature)


@router.get("")
def list_features(
    product_id: str, session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[FeaturePublic]:
    """List a product's features ordered by key."""
    items, total = service.list_features(
        session, caller.tenant_id, product_id, limit=page.limit, offset=page.offset
    )
    return Page[FeaturePublic](
        items=[FeaturePublic.model_validate(f) for f in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{feature_id}")
def get_feature(
    product_id: str, feature_id: str, session: SessionDep, caller: ViewerDep
) -> FeaturePublic:
    """Get one feature by id or key."""
    feature = service.get_feature(session, caller.tenant_id, product_id, feature_id)
    return FeaturePublic.model_validate(feature)


@router.patch("/{feature_id}")
def update_feature(
    *,
    product_id: str,
    feature_id: str,
    body: FeatureUpdate,
    session: SessionDep,
    caller: OperatorDep,
    now: NowDep,
    notify: NotifyDep,
) -> FeaturePublic:
    """Change a feature's default limit, cap, period or overage policy."""
    outcome = service.update_feature(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        product_id=product_id,
        feature_id=feature_id,
        data=body,
    )
    notify(outcome.device_ids)
    return FeaturePublic.model_validate(outcome.value)
