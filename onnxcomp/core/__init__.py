"""Core layer: pure numpy algorithms and the record format (k-means codebooks, pruning scores, OBS, least-squares
reconstruction, Huffman coding, sidecar I/O, budget arithmetic, recipe rules). No graph objects, no onnxruntime;
imports nothing from the layers above."""
