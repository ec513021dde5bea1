"""Image features: batched extraction, augmented views, the on-disk cache and its sharding over torchrun ranks."""

from kshot.features.augment import AugmentPolicy
from kshot.features.cache import FeatureStore, default_cache_dir
from kshot.features.distributed import Shard, shard_from_env
from kshot.features.extract import ExtractConfig, extract_features
from kshot.features.featureset import FeatureSet

__all__ = ["AugmentPolicy", "ExtractConfig", "FeatureSet", "FeatureStore", "Shard", "default_cache_dir",
           "extract_features", "shard_from_env"]
