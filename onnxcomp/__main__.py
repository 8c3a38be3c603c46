from onnxcomp.front.cli import run

run()
