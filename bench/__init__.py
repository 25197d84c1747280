"""The m2mesh benchmark suite: ``python -m bench [SCENARIO ...] [--quick] [--out DIR]``.

Every result is a ratio against a baseline measured in the same run: this
machine is shared, absolute times drift. Scenarios are modules with
``run(quick: bool) -> list[bench.report.Row]``, registered in `bench.cli`.
"""
