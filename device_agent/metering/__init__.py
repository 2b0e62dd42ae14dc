"""Usage metering on the device: record, buffer durably, publish, delete on ack.

- :mod:`~device_agent.metering.meter`: :class:`Meter` (``record(meter, quantity, dim=)``).
- :mod:`~device_agent.metering.buffer`: :class:`UsageBuffer`, the SQLite buffer.
- :mod:`~device_agent.metering.component`: :class:`MeteringComponent`, the sans-IO publisher.
- :mod:`~device_agent.metering.api`: :func:`open_meter` for the application and tools.
- :mod:`~device_agent.metering.config`: the ``[metering]`` table.

See docs/metering.md.
"""
