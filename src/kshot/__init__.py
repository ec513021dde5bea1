"""kshot: adapt pretrained vision(-language) models to new classes from a few labelled images.

Data flows one way: sources -> Dataset -> FeatureSet (cached) -> Method.fit/logits -> predictions -> metrics/reports.
"""

__version__ = "0.1.0"
