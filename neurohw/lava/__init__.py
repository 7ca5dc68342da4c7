"""Lava neuromorphic target: spiking networks in Loihi fixed point, run bit-exactly by a vectorized torch simulator
and by Lava (``Loihi2SimCfg(select_tag="fixed_pt")``) in the Python 3.10 sidecar ``.venv-lava``, mapped onto Loihi
cores, with energy and time per inference. ``python -m neurohw.lava --help``.

Keep this file free of imports: the sidecar (Python 3.10, numpy + lava only) imports ``neurohw.lava.network``.
"""
