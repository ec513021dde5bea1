"""`kshot serve`: a local web app and JSON API to fit a few-shot classifier on a dataset and classify images."""

from kshot.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
