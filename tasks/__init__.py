"""winnow's Prefect tasks (thin wrappers) and the pure algorithms they call.

Subpackages hold pure code (arrays in, arrays out): ``data``, ``models``, ``scorers``.
Top-level modules are the edges: ``settings`` (paths), ``lake`` (Parquet + DuckDB),
``tracking`` (MLflow), ``validation`` (Great Expectations) and ``stages`` (Prefect tasks).
"""
