"""Every table of the hub, imported in one place so ``Base.metadata`` is complete.

Alembic's environment and the migration test import this module; a new core model
module must be added here; a plugin names its own (``HubPlugin.models_module``).
"""

from __future__ import annotations

import hub.audit.models
import hub.entitlements.models
import hub.manifests.models
import hub.registry.models
from hub.db.base import Base
from hub.plugins import import_plugin_models, load_plugins

import_plugin_models(load_plugins())

__all__ = ["Base", "hub"]
