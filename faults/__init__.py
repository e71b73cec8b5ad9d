"""The fault suite: real daemon processes over real services, faulted, checked row by row.

``python -m faults`` (``make faults``) runs every fault on every backend it applies to, a
number of times, and prints one table: for each fault, how many runs stored exactly what an
uninterrupted run stores, the rows lost and duplicated, and the recovery time. ``--quick``
is the short version that ``make test`` runs (``tests/integration/test_faults.py``).
"""
