"""The m2mesh agent program: runtime, services, profiles and the `mesh` CLI.

(docs/ARCHITECTURE.md §1)
"""
