"""kshot.toyworld."""
