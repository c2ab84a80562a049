"""CPU kernels for MLX models: fused maths, per-shape compiled functions, RoPE tables,
attention, and the decode-block optimizer that applies them to mlx-lm models.

Used by the model formats (``app.models``) and the engine; imports only ``app.core``.
GPU backends keep MLX's stock paths (each kernel says where it applies).
"""
