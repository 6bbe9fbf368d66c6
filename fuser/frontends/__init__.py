"""Models in: ONNX files (``onnx``) and torch modules (``torch``), normalised to static-shape Graphs."""
