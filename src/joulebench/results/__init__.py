"""Trial records, the study directory, and the trial table."""
