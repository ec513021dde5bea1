"""kshot.continual."""
