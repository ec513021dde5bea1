"""kshot.data."""
