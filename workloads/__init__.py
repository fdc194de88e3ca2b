"""What runs inside a data source or the offload server: split models, compression
modules, the wire protocol, datasets, trace writing and the two programs."""
