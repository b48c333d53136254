"""The networks of the reproductions, taking plain arguments (never an experiment's ``Config``).

- :mod:`infdepth.models.xor_net`: the XOR network of "Going Deeper" (one g-infinity layer);
- :mod:`infdepth.models.going_deeper`: the all-g-infinity CNN of its MNIST experiment and the
  same CNN at a fixed depth;
- :mod:`infdepth.models.odenet`: the ODE-Net and its ResNet baseline.
"""
