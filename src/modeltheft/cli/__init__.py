"""The ``modeltheft`` command line."""
