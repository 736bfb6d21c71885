"""Tools for developing the package itself (not used at run time)."""
