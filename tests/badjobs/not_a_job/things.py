class CleanupJob:
    """Named like a job, but not a workers.Job."""
