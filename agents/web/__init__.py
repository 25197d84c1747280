"""The agent's read-only web view: dashboard, site page, `/metrics` (`agents.web.app`).

(docs/ARCHITECTURE.md §6.2)
"""
