"""The embedding micro-batcher: concurrent embedding requests gathered into padded
forward passes on one worker thread per model."""
