"""Demo mode (``carebridge serve --demo``): synthetic data and a demo provider app.

Everything here is composition on top of the three parts, like ``carebridge.app``: it
seeds through their published functions and the provider app talks to carebridge only
over HTTP, as an external provider app would. Production refuses it.
"""
