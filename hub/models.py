"""Every table of the hub, imported in one place so ``Base.metadata`` is complete.

Alembic's environment and the migration test import this module; a new model
module must be added here.
"""

from __future__ import annotations

import hub.audit.models
import hub.entitlements.models
import hub.manifests.models
import hub.registry.models
from hub.db.base import Base

__all__ = ["Base", "hub"]
