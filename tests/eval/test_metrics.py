import numpy as np
import torch

from kshot.eval.metrics import confusion_matrix, per_class_recall, summarize, topk_accuracy, topk_ids


def test_topk_ids_order_and_ties():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0]])
    ids = topk_ids(logits, 3)
    assert ids.tolist() == [[1, 3, 2], [0, 1, 2]]


def test_topk_accuracy_and_balanced():
    ids = np.array([[0, 1], [1, 0], [1, 2], [2, 1]])
    labels = np.array([0, 0, 1, 1])
    assert topk_accuracy(ids, labels, 1) == 0.5
    assert topk_accuracy(ids, labels, 2) == 1.0
    rec = per_class_recall(ids[:, 0], labels, 3)
    assert rec[0] == 0.5 and rec[1] == 0.5 and np.isnan(rec[2])


def test_mean_per_class_differs_from_overall_on_imbalance():
    labels = np.array([0] * 9 + [1])
    pred = np.zeros(10, dtype=int)
    m = summarize(pred[:, None], labels, 2)
    assert m["top1"] == 0.9
    assert m["mean_per_class"] == 0.5
    assert m["top5"] is None
    assert m["confusions"] == [{"true": "1", "pred": "0", "count": 1}]


def test_summarize_per_domain_and_unlabelled_rows():
    ids = np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 1, 3, 4]])
    labels = np.array([0, 0, 4, -1])
    m = summarize(ids, labels, 5, domains=["a", "a", "b", "b"])
    assert m["n"] == 3
    assert m["per_domain"]["a"] == {"n": 2, "top1": 0.5, "top5": 1.0}
    assert m["per_domain"]["b"]["top1"] == 1.0


def test_confusion_matrix_counts():
    m = confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    assert m.tolist() == [[1, 1], [0, 1]]
