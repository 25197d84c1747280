"""Multi-party workflows: a payment a third party's verdict releases (`escrow`).

(docs/ARCHITECTURE.md §4)
"""
