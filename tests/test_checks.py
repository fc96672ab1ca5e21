"""utils.checks: each argument check accepts what it should (NumPy scalars too) and names the argument and bounds."""

import numpy as np
import pytest

from tf_sharpest.utils._checks import choice, integer, is_integer, positive_float, positive_int


def test_integer_accepts_python_and_numpy_integers_within_bounds():
    assert integer("k", 3, low=1, high=3) == 3 and type(integer("k", np.int32(2), low=1)) is int
    assert is_integer(np.int64(5)) and not is_integer(True) and not is_integer(2.0) and not is_integer("2")


@pytest.mark.parametrize("value, kwargs, message", [
    (0, {"low": 1}, "k must be an integer >= 1, got 0."),
    (11, {"low": 1, "high": 10}, "k must be an integer with 1 <= k <= 10, got 11."),
    (4, {"high": 3}, "k must be an integer <= 3, got 4."),
    (2.0, {}, "k must be an integer, got 2.0."),
    (True, {"low": 0}, "k must be an integer >= 0, got True."),
    (0, {"low": 1, "high": 5, "bounds": "with 1 <= k <= dim=5"}, "k must be an integer with 1 <= k <= dim=5, got 0."),
    (0, {"low": 1, "hint": "Pass k=1."}, "k must be an integer >= 1, got 0. Pass k=1."),
])
def test_integer_messages_state_the_bounds(value, kwargs, message):
    with pytest.raises(ValueError) as error:
        integer("k", value, **kwargs)
    assert str(error.value) == message


def test_positive_numbers_and_choices():
    assert positive_int("n", np.int16(7)) == 7 and positive_int("n", None, allow_none=True) is None
    assert positive_float("tol", np.float32(0.5)) == 0.5 and positive_float("tol", 3) == 3.0
    for bad in (0.0, -1.0, np.nan, np.inf, True, "1e-3"):
        with pytest.raises(ValueError, match="tol must be a positive finite number"):
            positive_float("tol", bad)
    assert choice("which", "largest", ("largest", "smallest")) == "largest"
    with pytest.raises(ValueError, match=r"which must be one of \('largest', 'smallest'\), got 'biggest'"):
        choice("which", "biggest", ("largest", "smallest"))
