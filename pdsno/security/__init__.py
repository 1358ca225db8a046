"""Keys, signatures, hashes: the cryptography PDSNO relies on."""
