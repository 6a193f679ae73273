"""The classifier: the Flax CNN, its convolutions (XLA's or oneDNN's), training and inference."""
