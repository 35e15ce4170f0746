"""``python -m streaming.transport``: the registered transports."""

from streaming.transport import BACKENDS

if __name__ == "__main__":
    width = max(map(len, BACKENDS))
    for b in BACKENDS.values():
        several = "" if b.several_trainers else " (one trainer process only)"
        print(f"{b.name:<{width}}  {b.summary}{several}")
