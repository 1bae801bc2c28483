"""batchgate gateway: v2 HTTP front, dynamic batcher, router and pool client."""

__version__ = "0.1.0"
