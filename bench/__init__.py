"""``make bench``: the full pipeline against a bare-limit reference, on the same machine, in the same run.

- ``python -m bench`` (``harness``) sets up a database, parties and pre-signed documents, starts the service
  and the bare reference app, drives them with the load generator and prints and writes the results.
- ``python -m bench.load`` is the load generator, always run as a separate process.
- ``python -m bench.bare`` is the bare-limit reference: parse, verify one Ed25519 signature, one INSERT.
- ``python -m bench.seed`` bulk-loads referrals for the statistics scenario (COPY / executemany, not the API).
"""
