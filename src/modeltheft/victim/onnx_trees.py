"""Forests of scikit-learn classification trees as ONNX graphs that answer in float64.

skl2onnx writes a forest as ``TreeEnsembleClassifier`` (ai.onnx.ml 1), whose thresholds, leaf
values and output are float32: its probabilities carry float32 noise (0.03999999910593033 for
0.04). This graph gives scikit-learn's probabilities to the last bits:

* the rows are cast to float32 and back, as scikit-learn's trees read them, and compared with
  the float64 thresholds (``x <= threshold``: the left child);
* a ``TreeEnsemble`` node (ai.onnx.ml 5, float64) gives the index of the leaf each row reaches
  in each tree (one target per tree, the leaf's index as its weight);
* the leaves' class fractions (``tree_.value``, what ``DecisionTreeClassifier.predict_proba``
  returns) are gathered, summed over the trees and divided by their number, as the forest
  does.
"""

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper
from sklearn.base import ClassifierMixin
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

FORESTS = (RandomForestClassifier, ExtraTreesClassifier)
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 5)]
BRANCH_LEQ = 0


def supports(model: ClassifierMixin) -> bool:
    """Whether ``model`` is a fitted single-output forest or tree this module converts."""
    if isinstance(model, FORESTS):
        trees = getattr(model, "estimators_", None)
    elif isinstance(model, DecisionTreeClassifier):
        trees = [model] if hasattr(model, "tree_") else None
    else:
        return False
    return bool(trees) and getattr(model, "n_outputs_", 1) == 1


def forest_to_onnx(model: ClassifierMixin) -> ModelProto:
    """The float64 graph of a forest or tree: input ``X`` [N, d], output ``probabilities``
    [N, k] (columns in ``model.classes_`` order)."""
    if not supports(model):
        raise ValueError(f"not a fitted single-output forest or tree: {type(model).__name__}")
    trees = [model] if isinstance(model, DecisionTreeClassifier) else list(model.estimators_)
    nodes: dict[str, list[int | float]] = {
        name: []
        for name in (
            "feature",
            "split",
            "true",
            "true_leaf",
            "false",
            "false_leaf",
            "missing_true",
        )
    }
    roots, leaf_targets, leaf_rows, table = [], [], [], []
    for tree_id, estimator in enumerate(trees):
        tree = estimator.tree_
        left, right = tree.children_left, tree.children_right
        missing_left = getattr(tree, "missing_go_to_left", np.zeros(tree.node_count, np.uint8))
        interior = {n: i for i, n in enumerate(np.flatnonzero(left != -1))}
        leaves = {n: i for i, n in enumerate(np.flatnonzero(left == -1))}
        first_node, first_leaf = len(nodes["feature"]), len(leaf_rows)
        roots.append(first_node)
        values = tree.value[:, 0, :]
        for n in leaves:  # scikit-learn >= 1.4 keeps each leaf's class fractions: its answer
            table.append(values[n])
            leaf_targets.append(tree_id)
            leaf_rows.append(float(first_leaf + leaves[n]))
        if not interior:  # a tree that is one leaf: a split whose both sides reach it
            interior = {-1: 0}
            left = right = np.array([0])
            tree_feature, tree_threshold = np.array([0]), np.array([0.0])
        else:
            tree_feature, tree_threshold = tree.feature, tree.threshold

        # A child by its position: among the leaves (flag 1) or the interior nodes (flag 0).
        child = {n: (first_leaf + i, 1) for n, i in leaves.items()}
        child.update({n: (first_node + i, 0) for n, i in interior.items()})
        for n in interior:
            true_id, true_leaf = child[int(left[n])]
            false_id, false_leaf = child[int(right[n])]
            nodes["feature"].append(int(tree_feature[n]))
            nodes["split"].append(float(tree_threshold[n]))
            nodes["true"].append(true_id)
            nodes["true_leaf"].append(true_leaf)
            nodes["false"].append(false_id)
            nodes["false_leaf"].append(false_leaf)
            nodes["missing_true"].append(int(missing_left[n]) if n >= 0 else 0)
    ensemble = helper.make_node(
        "TreeEnsemble",
        ["X64"],
        ["leaf"],
        domain="ai.onnx.ml",
        n_targets=len(trees),
        aggregate_function=1,  # SUM: each tree writes only its own target
        post_transform=0,
        tree_roots=roots,
        nodes_featureids=nodes["feature"],
        nodes_splits=numpy_helper.from_array(np.array(nodes["split"], dtype=np.float64)),
        nodes_modes=numpy_helper.from_array(np.full(len(nodes["split"]), BRANCH_LEQ, np.uint8)),
        nodes_truenodeids=nodes["true"],
        nodes_trueleafs=nodes["true_leaf"],
        nodes_falsenodeids=nodes["false"],
        nodes_falseleafs=nodes["false_leaf"],
        nodes_missing_value_tracks_true=nodes["missing_true"],
        leaf_targetids=leaf_targets,
        leaf_weights=numpy_helper.from_array(np.array(leaf_rows, dtype=np.float64)),
    )
    width, k = int(model.n_features_in_), len(model.classes_)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["X"], ["X32"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["X32"], ["X64"], to=TensorProto.DOUBLE),
            ensemble,
            helper.make_node("Cast", ["leaf"], ["rows"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "rows"], ["per_tree"], axis=0),
            helper.make_node("ReduceSum", ["per_tree", "axis"], ["total"], keepdims=0),
            helper.make_node("Div", ["total", "n_trees"], ["probabilities"]),
        ],
        "forest_float64",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, [None, k])],
        initializer=[
            numpy_helper.from_array(np.array(table, dtype=np.float64), "table"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
            numpy_helper.from_array(np.array(float(len(trees))), "n_trees"),
        ],
    )
    return helper.make_model(graph, opset_imports=OPSETS, producer_name="modeltheft")
