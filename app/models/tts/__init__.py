"""Text-to-speech models: ``hibari`` (a Kokoro-distilled voice on onnxruntime, from a wheel)."""
