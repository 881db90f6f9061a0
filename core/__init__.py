"""BetterTogether Studio core: everything but the UI. Never imports streamlit."""

import os as _os

# LiteLLM fetches its model price map from the internet at import unless told to use the bundled
# copy: offline, that look-up would stall every start.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# llama.cpp (and torch) run their threads under OpenMP, whose default is to spin while waiting at
# each barrier. When another process holds a core, a spinning thread waits for a whole scheduler
# slice: measured on 2 busy cores (load average 4), 24 generated tokens took 31.9 s with two spinning
# threads, 0.8 s with OMP_WAIT_POLICY=passive (0.5 s with one thread). Set before llama.cpp's OpenMP
# runtime loads (it reads the variable once); a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
