"""Class groups: all / seen / unseen / domain / ids, intersections, negation, and errors naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from kshot.errors import ConfigError
from kshot.pipelines.groups import ClassInfo, resolve_group

INFO = ClassInfo(num_classes=6, domains=["Animal", "Animal", "Thu-dog", "Thu-dog", "Stanford-Cars", "Stanford-Cars"],
                 seen=np.array([1, 1, 1, 1, 0, 0], dtype=bool))


@pytest.mark.parametrize("spec, ids", [
    ("all", [0, 1, 2, 3, 4, 5]), ("seen", [0, 1, 2, 3]), ("unseen", [4, 5]), ("domain:thu-dog", [2, 3]),
    ("domain:Animal,Stanford-Cars", [0, 1, 4, 5]), ("ids:1-2,5", [1, 2, 5]), ("seen&!domain:Thu-dog", [0, 1]),
    ("all & ids:0-4 & unseen", [4]),
])
def test_groups_resolve_to_sorted_ids(spec, ids) -> None:
    assert resolve_group(spec, INFO).tolist() == ids


@pytest.mark.parametrize("spec, needle", [
    ("domain:Food-101", "no class in domain 'food-101'"), ("ids:9", "outside 0..5"), ("seen&unseen", "is empty"),
    ("ids:3-1", "empty id range"), ("", "non-empty"),
])
def test_bad_groups_raise_config_errors(spec, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_group(spec, INFO)


def test_domains_need_a_class_file_with_prefixes() -> None:
    info = ClassInfo(num_classes=2, domains=None, seen=np.ones(2, dtype=bool))
    with pytest.raises(ConfigError, match="no <Domain>_ prefixes"):
        resolve_group("domain:Animal", info)
