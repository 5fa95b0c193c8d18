# Metadata lives in setup.cfg; this shim keeps legacy `pip install -e .` paths working.
from setuptools import setup

setup()
