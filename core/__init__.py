"""BetterTogether Studio core: everything but the UI. Never imports streamlit."""

import os as _os

# LiteLLM fetches its model price map from the internet at import unless told to use the bundled
# copy: offline, that look-up would stall every start.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
