"""Metrics components: functions of numbers and tensors, never of run directories."""
