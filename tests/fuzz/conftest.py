"""Hypothesis profiles for the fuzz suite.

``ci`` (the default) is derandomized, so a CI run is reproducible and the suite as a whole tries a
few thousand cases in about two minutes on a 2-core machine. ``PARITY_FUZZ_EXAMPLES=N`` sets the
examples per test and draws fresh random cases (the ``deep`` profile), for a longer hunt.
No example database: a fuzz run leaves nothing in the working tree.
"""
import os

from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
             HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much]

#: examples per test in CI; the suite has about a dozen tests
CI_EXAMPLES = 300

settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, database=None, deadline=None,
                          suppress_health_check=_SUPPRESS, print_blob=True)
settings.register_profile("deep", max_examples=int(os.environ.get("PARITY_FUZZ_EXAMPLES") or CI_EXAMPLES),
                          derandomize=False, database=None, deadline=None,
                          suppress_health_check=_SUPPRESS, print_blob=True)
settings.load_profile("deep" if os.environ.get("PARITY_FUZZ_EXAMPLES") else "ci")
