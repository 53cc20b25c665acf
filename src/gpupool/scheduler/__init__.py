"""The pure scheduling core: snapshot, queues and fair share, gang, preemption, backfill, placement."""
