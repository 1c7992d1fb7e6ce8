"""CAM methods: importing this package registers every method with the engine."""
from . import gradient  # noqa: F401
