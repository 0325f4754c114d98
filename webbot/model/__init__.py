"""The language model: loading, prompt planning (memory), the generation engine, its KV cache and metrics,
and the remote backend. No Flask here."""
