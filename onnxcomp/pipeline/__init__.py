"""Pipeline layer: what each command does (compress, the quality-budget search, inspect, verify, decompress),
composed from the passes below. Imports ``onnxcomp.passes`` and ``onnxcomp.core``, never the front."""
