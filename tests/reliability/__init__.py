"""Reliability and security: fuzzing, hostile peers, crash recovery, network faults, load.

Every long run is marked ``slow``; each has a short unmarked twin that runs in CI.
The threat model these tests back is in SECURITY.md at the top of the repository.
"""
