"""Entitlements: who may use which features, on which device, until when.

Modules: :mod:`.models` (tables), :mod:`.schemas` (API bodies),
:mod:`.service` (accounts, features, entitlement lifecycle, expiry job),
:mod:`.activations` (activate, deactivate, rehost), :mod:`.seats` (floating
seats), :mod:`.effective` (the pure effective-feature rules), :mod:`.grants`
(database snapshots for them: ``device_features``, ``device_lease``),
:mod:`.history` (per-account/per-device history), :mod:`.routers` (REST).
"""
