"""The ``securekv`` command line."""
