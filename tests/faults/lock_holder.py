"""Hold a directory's lock for the lock tests, as a run writing it would:
``python lock_holder.py DIR COMMAND`` takes it (:func:`sqvae_speech.locks.dir_lock`), prints
``locked`` and keeps it until its stdin closes (then releases it as a finishing run does)
or it is killed."""

from __future__ import annotations

import sys

from sqvae_speech.locks import dir_lock

if __name__ == "__main__":
    with dir_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.read()
