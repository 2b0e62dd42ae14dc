"""Usage metering on the device: record, buffer durably, publish, delete on ack."""
