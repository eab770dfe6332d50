"""openprofile: an open implementation of AEP's Real-Time Customer Profile service and its export jobs."""

__version__ = "0.1.0"
