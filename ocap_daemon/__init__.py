"""daemon: the control plane (INI config, ``ocapd``, scheduler jobs, policy, worker supervision).
Never imports torch; only the worker subprocess imports ocap_core's torch modules."""

__all__: list = []
