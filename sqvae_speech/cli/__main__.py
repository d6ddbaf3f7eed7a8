"""`python -m sqvae_speech.cli`: the same as the `sqvae-speech` command (used by `accelerate launch -m`)."""

import sys

from . import main

sys.exit(main())
