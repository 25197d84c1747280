"""The m2mesh benchmark suite. Every result is a ratio against a baseline
measured in the same run: this machine is shared, absolute times drift."""
