"""Test doubles and throwaway services shared by the test suite and the benchmarks.

``clock`` (a clock moved by hand), ``score_api`` (histories, fault injection, the real replay
app on loopback), ``savedmodel`` (small SavedModels with the production signature), ``postgres``
(a throwaway PostgreSQL 15 cluster) and ``s3`` (moto's S3 server).

Nothing here is part of the daemon: no module of ``scorebeater`` outside this package imports
it, and nothing here imports pytest, so ``bench/`` runs without it. Some modules need the
``dev`` extra (moto) or the ``model`` extra (TensorFlow) when their functions are called.
"""
