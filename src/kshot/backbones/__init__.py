"""kshot.backbones."""
