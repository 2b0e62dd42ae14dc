"""``/api/v1/products``: the tenant's product catalogue."""

from __future__ import annotations

from fastapi import APIRouter, status

from hub.api.deps import NowDep, OperatorDep, Page, PaginationDep, SessionDep, ViewerDep
from hub.registry import service
from hub.registry.schemas import ProductCreate, ProductPublic, ProductUpdate

router = APIRouter(prefix="/products", tags=["products"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_product(
    body: ProductCreate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> ProductPublic:
    """Create a product (SKU unique per tenant)."""
    product = service.create_product(
        session, tenant_id=caller.tenant_id, actor=caller.actor, now=now, data=body
    )
    return ProductPublic.model_validate(product)


@router.get("")
def list_products(
    session: SessionDep, caller: ViewerDep, page: PaginationDep
) -> Page[ProductPublic]:
    """List products ordered by SKU."""
    items, total = service.list_products(
        session, caller.tenant_id, limit=page.limit, offset=page.offset
    )
    return Page[ProductPublic](
        items=[ProductPublic.model_validate(p) for p in items],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{product_id}")
def get_product(product_id: str, session: SessionDep, caller: ViewerDep) -> ProductPublic:
    """Get one product."""
    return ProductPublic.model_validate(service.get_product(session, caller.tenant_id, product_id))


@router.patch("/{product_id}")
def update_product(
    product_id: str, body: ProductUpdate, session: SessionDep, caller: OperatorDep, now: NowDep
) -> ProductPublic:
    """Change a product's name or description."""
    product = service.update_product(
        session,
        tenant_id=caller.tenant_id,
        actor=caller.actor,
        now=now,
        product_id=product_id,
        data=body,
    )
    return ProductPublic.model_validate(product)
