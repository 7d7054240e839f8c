"""Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE`` (docs/testing.md).

- unset (what ``make test`` runs): Hypothesis' own quick settings, 100 inputs per
  property unless a test asks for more (its built-in ``ci`` profile when it sees a CI
  environment; elsewhere ``local``, its ``default`` without the per-input deadline,
  which a machine busy with other work overran now and then).
- ``fuzz`` (``make fuzz``): :data:`FUZZ_EXAMPLES` inputs per property and no deadline
  (a loaded machine is slow, not wrong).

``tests/conftest.py`` imports this module, so the profile is loaded before any test
module is; a test that asks for more than the default writes
``@settings(max_examples=at_least(300))`` and gets the long profile's count in ``fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = 10_000
PROFILE_VARIABLE = "HYPOTHESIS_PROFILE"

settings.register_profile(
    "fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("local", deadline=None)
if os.environ.get(PROFILE_VARIABLE):
    settings.load_profile(os.environ[PROFILE_VARIABLE])
elif not os.environ.get("CI"):
    settings.load_profile("local")


def at_least(examples: int) -> int:
    """``examples``, or the loaded profile's count when that is more."""
    return max(examples, settings.default.max_examples)
