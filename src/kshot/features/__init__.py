"""Image features: batched extraction, augmented views and the on-disk cache."""

from kshot.features.augment import AugmentPolicy
from kshot.features.cache import FeatureStore, default_cache_dir
from kshot.features.extract import ExtractConfig, extract_features
from kshot.features.featureset import FeatureSet

__all__ = ["AugmentPolicy", "ExtractConfig", "FeatureSet", "FeatureStore", "default_cache_dir", "extract_features"]
