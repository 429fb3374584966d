"""Dataset plugins, one module per dataset."""
