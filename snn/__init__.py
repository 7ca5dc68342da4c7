"""The spiking track: neurons, spiking models, their runtime and accounting."""
