import os

# A stray pretrained tag must fail at once instead of retrying the hub for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
