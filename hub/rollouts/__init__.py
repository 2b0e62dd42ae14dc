"""Firmware rollouts: targets, waves, thresholds, windows, per-device jobs (issue #4)."""
