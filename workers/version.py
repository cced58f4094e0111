"""The version of workers (its own module, so that any module can read it without a circle)."""

__version__ = "0.1.0"
#: the name on the package index (`pip install mongo-workers`); the import name is `workers`
DISTRIBUTION = "mongo-workers"
