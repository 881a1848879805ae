"""Training-loop building blocks: checkpoints, schedules, metrics and run summaries."""
