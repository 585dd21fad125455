"""attention_jax test suite; mirrors the library file for file."""
