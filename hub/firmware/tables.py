"""Every table of the firmware plugin (the plugin's ``models_module``)."""

from __future__ import annotations

import hub.firmware.models
import hub.rollouts.models

__all__ = ["hub"]
