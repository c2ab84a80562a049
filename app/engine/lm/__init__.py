"""The language-model engine: requests in (``types.GenerationRequest``), per-token
events out, on one worker thread per model (``worker.ModelEngine``)."""
