"""Firmware catalogue, delivery and rollouts (issue #4)."""
