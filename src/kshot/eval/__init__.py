"""Evaluation: metrics, predictions, the challenge's result.txt, protocols, reports."""
