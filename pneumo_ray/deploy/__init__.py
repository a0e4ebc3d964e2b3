"""Offline bundles for air-gapped machines: a wheelhouse and the data sets as files in parts of a
chosen size, with checksums, and their joining and installation on the target. Runs with the
standard library alone (on the target, before anything is installed). May import: config."""
