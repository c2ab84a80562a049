"""OpenAI's Responses API: request mapping, input items, the response writer and the
store of responses kept for ``previous_response_id``."""
