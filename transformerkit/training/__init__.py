"""Training: checkpoints, schedules and the one trainer every family uses."""
