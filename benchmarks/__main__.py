"""``python -m benchmarks`` (``make bench``): batchgate against raw ONNX Runtime, in one run."""

from benchmarks.core import main

main()
