"""What the tests and the benchmarks share: the small real models they run (fetched from PyPI packages that
carry them), real server processes, Redis and PostgreSQL, nginx with a stand-in for the frp tunnel, and
speech clips made by espeak-ng and ffmpeg. Nothing here is part of the product.
"""
