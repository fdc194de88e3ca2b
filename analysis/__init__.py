"""Reading run directories into tables and plots. Reads files only: it imports
nothing from ``testbed`` or ``workloads``."""
