"""fanout_tx's tests. Registers a modest hypothesis profile so the whole suite stays fast;
``HYPOTHESIS_PROFILE=thorough`` runs many more examples."""

import os

from hypothesis import settings

settings.register_profile("fanout", max_examples=60, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fanout"))
