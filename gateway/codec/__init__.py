"""Protocol codecs: pure functions between wire formats and :mod:`gateway.types`."""
