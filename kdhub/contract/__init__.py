"""Layer 1, the contract and data model: what plugins implement and what a run is made of.

The plugin base classes (:mod:`~kdhub.contract.base`, ``method``, ``policy``, ``metric``, ``model``,
``dataset``, ``command``), what the engine hands them (``outputs``, ``runlog``, ``tables``,
``runview``), the hooks (``hookspecs``), the errors, the run config's schema and how YAML files are
read (``config``, ``config_loading``, ``validation``) and MLflow's limits (``limits``). It imports no
other layer; plugin authors import its public names from :mod:`kdhub`.
"""
