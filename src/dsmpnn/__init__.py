"""dsmpnn."""
