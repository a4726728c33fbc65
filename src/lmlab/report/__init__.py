"""Report components: plots and documents built from numbers a run wrote."""
