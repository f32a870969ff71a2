import numpy as np

from modeltheft.data import lab_split


def test_lab_split_sizes_and_scaling() -> None:
    split = lab_split()
    assert split.X_test.shape == (540, 64)
    assert split.X_train.shape == (1257, 64)
    assert split.X_train.min() >= 0.0 and split.X_train.max() <= 1.0
    assert set(np.unique(split.y_test)) == set(range(10))


def test_lab_split_is_read_only_and_stable() -> None:
    first, second = lab_split(), lab_split()
    assert np.array_equal(first.X_test, second.X_test)
    assert not first.X_test.flags.writeable
