"""A/B firmware install on the device agent.

* :mod:`device_agent.firmware.install`: the pure install state machine.
* :mod:`device_agent.firmware.slots`: file-backed slots, the persisted state
  and the :class:`~device_agent.firmware.slots.Installer` that drives the core.
* :mod:`device_agent.firmware.report`: step reports with idempotency keys.

See ``docs/firmware-install.md``.
"""
