"""winnow's Prefect flows and the ``winnow`` command line."""
