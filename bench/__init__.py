"""tfft's performance benchmark (not part of the test suite): ``python -m bench.run``."""
