"""The one cache of an operator's traced graphs: a ``tf.function`` per kind of product, traced per batch signature."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import tensorflow as tf


class TracedFunctions(Mapping):
    """An operator's ``tf.function`` of each kind (``"loss"``, ``"gradient"``, ``"matvec"``, ...), by name.

    Each kind is one ``tf.function``, created on first use. Its graphs are
    TensorFlow's own concrete functions, one per batch signature: a product
    on new data cut into batches of another size traces once more, the same
    signature never twice. TensorFlow's ``experimental_get_tracing_count()``
    on an entry tells how often it was traced, and
    ``pretty_printed_concrete_signatures()`` for which signatures.

    Example:

    ```python
    operator = HessianOperator(model, (x, y), batch_size=32)
    operator.matvec(v)
    operator.traced_functions["matvec"].experimental_get_tracing_count()  # 1
    ```
    """

    def __init__(self):
        self._functions = {}

    def __getitem__(self, name: str) -> tf.types.experimental.PolymorphicFunction:
        return self._functions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)

    def function(self, name: str, python_function: Callable, **options):
        """The ``tf.function`` of ``name`` (made from ``python_function`` and ``options`` on first use)."""
        function = self._functions.get(name)
        if function is None:
            function = self._functions[name] = tf.function(python_function, **options)
        return function

    def concrete(self, name: str, python_function: Callable, *specs):
        """The graph of ``name`` for the argument signature ``specs`` (traced on the first request only)."""
        return self.function(name, python_function).get_concrete_function(*specs)
