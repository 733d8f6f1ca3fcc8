"""Point-cloud ops (sampling, serialization, selective scan, sparse conv, patch attention), each with a torch twin."""
