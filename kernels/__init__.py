"""attention_jax.kernels: custom attention kernels (Pallas).

Installed as `attention_jax.kernels` (setup.cfg maps this top-level folder there). The flash-attention kernel,
its VJP, block sizes, reference, dispatch and benchmark arrive with the kernel work; until then this package
is intentionally empty.
"""

__all__: list[str] = []
