"""Session role: the sans-IO TCP session engine and its sequence arithmetic."""
