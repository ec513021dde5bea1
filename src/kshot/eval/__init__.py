"""kshot.eval."""
