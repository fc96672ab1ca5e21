import numpy as np
import pytest

from tf_sharpest.utils import FlatLayout


def test_columns_split_and_join_row_major_per_variable():
    layout = FlatLayout([(2, 3), (4,), (1, 1)], names=["kernel", "bias", "scale"])
    matrix = np.arange(11 * 2, dtype=np.float64).reshape(11, 2)  # [dim, k]: row r holds 2r and 2r + 1
    kernel, bias, scale = (part.numpy() for part in layout.unflatten_columns(matrix))
    # By hand: rows 0-5 are the kernel row-major, 6-9 the bias, 10 the scale; column j is the j-th slice.
    np.testing.assert_array_equal(kernel[..., 0], [[0, 2, 4], [6, 8, 10]])
    np.testing.assert_array_equal(kernel[..., 1], [[1, 3, 5], [7, 9, 11]])
    np.testing.assert_array_equal(bias, [[12, 13], [14, 15], [16, 17], [18, 19]])
    np.testing.assert_array_equal(scale, [[[20, 21]]])
    np.testing.assert_array_equal(layout.flatten_columns([kernel, bias, scale]).numpy(), matrix)
    # Each column is the flat vector of its slices, as flatten gives it.
    np.testing.assert_array_equal(layout.flatten([kernel[..., 1], bias[..., 1], scale[..., 1]]).numpy(), matrix[:, 1])


def test_column_shapes_are_checked():
    layout = FlatLayout([(2, 3), (4,)], names=["kernel", "bias"])
    with pytest.raises(ValueError, match="Expected 2 per-variable arrays"):
        layout.flatten_columns([np.ones((2, 3, 1))])
    with pytest.raises(ValueError, match=r"The array for bias has shape \(3, 1\); expected \(4, 'K'\)"):
        layout.flatten_columns([np.ones((2, 3, 1)), np.ones((3, 1))])
    with pytest.raises(ValueError, match=r"disagree on K: \[1, 2\]"):
        layout.flatten_columns([np.ones((2, 3, 1)), np.ones((4, 2))])
    with pytest.raises(ValueError, match=r"\[dim=10, k\] matrix"):
        layout.unflatten_columns(np.ones((9, 2)))
